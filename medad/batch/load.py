"""Step 3a of ``medad score``: decode series in worker processes, ahead of the model, and check their values.

:class:`SeriesLoader` yields ``(record, volume | None, error, seconds)`` in order, decoding in a ``DataLoader`` with
``workers`` processes (one series per item); a decoding process that dies fails only the series it was decoding.
Each decoded volume is checked (:func:`check_values`) before it reaches the model:

- a NIfTI/NRRD volume that is a label map or atlas, not an image, comes back as ``error="skip:label_map: ..."``
  (:func:`label_map_reason`);
- NaN/Inf voxels: a volume without any finite voxel fails (``"non_finite: ..."``); otherwise the non-finite voxels
  are set to the volume's finite minimum (background) and the series is scored on its finite voxels with a warning
  (``volume.meta["warnings"]``), recorded in its row: never an ``ok`` with a score made of NaNs;
- a constant volume (every voxel one value: blank or damaged) fails with ``"no_signal: ..."``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..io import SeriesRecord, load_series
from ..io import clean_message

__all__ = ["SeriesLoader", "check_shared_memory", "check_values", "default_workers", "label_map_reason", "one_line"]

log = logging.getLogger("medad.batch")


def one_line(e: BaseException) -> str:
    """``"<type>: <message>"`` on one line (at most 500 characters of message), without what changes between
    identical runs (object addresses, process ids, temporary names: :func:`medad.io._header.clean_message`)."""
    return f"{type(e).__name__}: {clean_message(str(e))[:500]}"


_LABEL_MAX_VALUES = 64        # integer volumes with at most this many values are label maps
_LABEL_PIECEWISE = 0.8        # ... or, up to 4096 values, when >= 80 % of neighbouring foreground voxels are equal


def label_map_reason(volume, kind: str) -> str:
    """``"label_map: ..."`` when a NIfTI/NRRD volume is a label map or atlas (a mask stored next to the images, e.g.
    ``lesion_mask.nii.gz``, or a 16-label atlas), else ``""``. DICOM series are never treated as label maps.

    Label maps are integer-valued with few values (at most 64), or piecewise constant (up to 4096 values, and most
    neighbouring foreground voxels equal, where images have noise)."""
    if kind not in ("nifti", "itk"):
        return ""
    t = volume.as_tensor()
    flat = t.reshape(-1)
    sample = flat[:: max(1, flat.numel() // 200_000)]
    if not bool(torch.all(sample == sample.round())):
        return ""
    sample_values, sample_counts = torch.unique(sample, return_counts=True)
    if sample_values.numel() > 4096:
        return ""
    if sample_values.numel() > _LABEL_MAX_VALUES:  # many values: a label map only if piecewise constant (O(N) test)
        arr = t[0] if t.ndim == 4 else t
        bg = sample_values[sample_counts.argmax()]
        a, b = arr[:-1], arr[1:]
        fg = (a != bg) | (b != bg)
        if not bool(fg.any()) or float((a[fg] == b[fg]).float().mean()) < _LABEL_PIECEWISE:
            return ""
    values = torch.unique(flat)
    if values.numel() > 4096 or not bool(torch.all(values == values.round())):
        return ""
    n = values.numel()
    shown = ", ".join(f"{v:g}" for v in values[:12].tolist()) + (", ..." if n > 12 else "")
    return (f"label_map: holds only the integer values {{{shown}}} ({n} values): a label or mask volume or an atlas, not an "
            "image to score")


def check_values(volume, kind: str) -> str:
    """Check a decoded volume before scoring; returns ``""`` (score it), ``"skip:<code>: ..."`` (not an image to
    score) or ``"<code>: ..."`` (fail it). NaN/Inf voxels, when some voxels are finite, are replaced in place by the
    finite minimum and reported in ``volume.meta["warnings"]``."""
    t = volume.as_tensor()
    bad = ~torch.isfinite(t)
    n_bad, n = int(bad.sum()), t.numel()
    if n_bad == n:
        return (f"non_finite: all {n} voxels are NaN or infinite (damaged data, or a RescaleSlope or scl_slope of "
                "inf or nan): nothing to score")
    if n_bad:
        low = float(t[~bad].min())
        t[bad] = low
        volume.meta.setdefault("warnings", []).append(
            f"non_finite: {n_bad} of {n} voxels ({100.0 * n_bad / n:.3g} %) were NaN or infinite and were set to the "
            f"volume minimum ({low:g}); scored on the finite voxels")
    lo, hi = torch.aminmax(t)
    if float(lo) == float(hi):
        return f"no_signal: every voxel has the value {float(lo):g} (a blank or damaged series): nothing to score"
    skip = label_map_reason(volume, kind)
    return "skip:" + skip if skip else ""


class _SeriesDataset(Dataset):
    """Item ``i`` -> ``(i, MetaTensor or None, error or "", seconds)``; never raises (errors are returned).

    A label map (:func:`label_map_reason`) comes back as ``(i, None, "skip:<reason>", seconds)``.
    """

    def __init__(self, records: Sequence[SeriesRecord], order: Sequence[int]):
        self.records, self.order = records, list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, j: int):
        i = self.order[j]
        t = time.perf_counter()
        try:
            vol = load_series(self.records[i])
            problem = check_values(vol, self.records[i].kind)
            if problem:
                return i, None, problem, time.perf_counter() - t
            return i, vol, "", time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - reported per series
            return i, None, one_line(e), time.perf_counter() - t


def _identity(x):
    return x


class SeriesLoader:
    """Iterate ``(record, volume | None, error, load_seconds)`` over ``records`` in order, decoding ahead in
    ``workers`` processes (a ``DataLoader``, one series per item, ``prefetch_factor=1`` so at most ``workers``
    decoded volumes wait in memory). ``workers=0`` decodes in the calling process.

    A decoding process that dies (a decoder segfault, the OOM killer) does not stop the batch: the series the loader
    was waiting for is decoded again alone in a fresh process (failed with ``WorkerCrash`` if that dies too, so an
    innocent series decoded next to the culprit is not blamed), then the loader restarts on the remaining series.
    """

    def __init__(self, records: Sequence[SeriesRecord], workers: int = 2):
        self.records = list(records)
        self.workers = max(0, int(workers))

    def __len__(self) -> int:
        return len(self.records)

    def _loader(self, order: Sequence[int], workers: int) -> DataLoader:
        return DataLoader(_SeriesDataset(self.records, order), batch_size=None, shuffle=False,
                          num_workers=min(workers, len(order)), collate_fn=_identity, prefetch_factor=1,
                          persistent_workers=False)

    def _alone(self, i: int) -> tuple[SeriesRecord, Any, str, float]:
        try:
            _, vol, err, sec = next(iter(self._loader([i], 1)))
            return self.records[i], vol, err, sec
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            return (self.records[i], None, "WorkerCrash: the decoding process died on this series "
                    f"({clean_message(str(e))[:200]}). If many series fail like this, /dev/shm may be too small "
                    "for the volumes (Docker: --shm-size 4g) or memory is short: try --workers 0.", 0.0)

    def __iter__(self) -> Iterator[tuple[SeriesRecord, Any, str, float]]:
        remaining = list(range(len(self.records)))
        if self.workers == 0:
            ds = _SeriesDataset(self.records, remaining)
            for j in range(len(ds)):
                i, vol, err, sec = ds[j]
                yield self.records[i], vol, err, sec
            return
        while remaining:
            got = 0
            it = iter(self._loader(remaining, self.workers))
            try:
                for i, vol, err, sec in it:
                    got += 1
                    yield self.records[i], vol, err, sec
                remaining = []
            except RuntimeError as e:
                if "DataLoader worker" not in str(e):
                    raise
                del it
                remaining = remaining[got:]
                log.warning("a decoding process died (%s); retrying the next series alone, then %d more",
                            " ".join(str(e).split())[:200], len(remaining) - 1)
                yield self._alone(remaining.pop(0))


def check_shared_memory(records: Sequence[SeriesRecord], workers: int, path: str = "/dev/shm") -> str:
    """A warning when decoded volumes may not fit in shared memory (worker processes hand volumes over through
    ``/dev/shm``; Docker's default is 64 MB), else ``""``."""
    if workers <= 0 or not records or not os.path.isdir(path):
        return ""
    largest = max(int(np.prod(r.shape)) * 4 if r.shape else 0 for r in records)
    free = shutil.disk_usage(path).free
    if largest and free < 2 * (workers + 1) * largest:
        return (f"{path} has {free / 2**20:.0f} MB free but decoded volumes take up to {largest / 2**20:.0f} MB each "
                f"and {workers} decoding workers keep some in flight: decoding may crash (Docker: --shm-size 4g) "
                "or use --workers 0")
    return ""


def default_workers() -> int:
    """Decoding processes: half the CPUs (the rest feed the model), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))
