"""Helpers of :mod:`medad.engine.score`: decoding in worker processes, sharding, batch sizing, per-series writes."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..io import SeriesRecord, load_series
from . import manifest as mf

__all__ = ["SeriesLoader", "StowGate", "check_shared_memory", "label_map_reason", "run_with_backoff", "balanced_shards", "default_batch_size", "default_workers",
           "write_series_outputs"]

log = logging.getLogger("medad.engine.score")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"


def label_map_reason(volume, kind: str) -> str:
    """``"label_map: ..."`` when a NIfTI/NRRD volume holds a handful of integer labels (a mask stored next to
    the images, e.g. ``lesion_mask.nii.gz``), else ``""``. DICOM series are never treated as label maps."""
    if kind not in ("nifti", "itk"):
        return ""
    flat = volume.as_tensor().reshape(-1)
    sample = flat[:: max(1, flat.numel() // 200_000)]
    if not bool(torch.all(sample == sample.round())) or torch.unique(sample).numel() > 8:
        return ""
    values = torch.unique(flat)
    if values.numel() > 8 or not bool(torch.all(values == values.round())):
        return ""
    shown = ", ".join(f"{v:g}" for v in values.tolist())
    return f"label_map: holds only the integer values {{{shown}}}: a label/mask volume, not an image to score"


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
            skip = label_map_reason(vol, self.records[i].kind)
            if skip:
                return i, None, "skip:" + skip, time.perf_counter() - t
            return i, vol, "", time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - reported per series
            return i, None, _one_line(e), time.perf_counter() - t


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
                    f"({' '.join(str(e).split())[:200]}). If many series fail like this, /dev/shm may be too small "
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
                log.warning("a decoding process died (%s); retrying series %s alone, then %d more",
                            " ".join(str(e).split())[:200], self.records[remaining[0]].key, len(remaining) - 1)
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


def run_with_backoff(runner, volume):
    """``runner.run(volume)``; on a CUDA out-of-memory error halve ``runner.batch_size`` and try again (the smaller
    batch is kept for the next series). Re-raises when a batch of 1 does not fit."""
    while True:
        try:
            return runner.run(volume)
        except torch.cuda.OutOfMemoryError:
            if runner.batch_size <= 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            runner.batch_size = max(1, runner.batch_size // 2)
            log.warning("out of GPU memory: slice batch reduced to %d", runner.batch_size)


def balanced_shards(records: Sequence[SeriesRecord], n: int) -> list[list[SeriesRecord]]:
    """Split ``records`` into ``n`` shards of about equal slice count (greedy, largest first; deterministic).

    Each shard keeps the original order.
    """
    def size(r: SeriesRecord) -> int:
        return max(int((r.shape[-1] if r.shape else r.n_files) or 1), 1)

    loads = [0] * n
    owner: dict[int, int] = {}
    for i in sorted(range(len(records)), key=lambda i: (-size(records[i]), i)):
        r = min(range(n), key=lambda k: (loads[k], k))
        owner[i] = r
        loads[r] += size(records[i])
    return [[records[i] for i in range(len(records)) if owner[i] == r] for r in range(n)]


def default_workers() -> int:
    """Decoding processes: half the CPUs (the rest feed the model), at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def default_batch_size(device: torch.device | str, detector=None) -> int:
    """Slices per model call sized to the device.

    CPU: 16 (larger batches do not go faster on CPU). CUDA: as many slices as fit in half of the free memory, at an
    estimate of the activations per slice from the backbone width/depth (``tokens * width * 4 bytes * (2*depth +
    16)``, conservative for inference), between 8 and 512.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return 16
    free, _ = torch.cuda.mem_get_info(device)
    width, depth, tokens = 1024, 24, 290  # ViT-L-14 at 240 px
    visual = getattr(getattr(detector, "model", None), "visual", None)
    if visual is not None:
        try:
            width = int(visual.transformer.width)
            depth = len(visual.transformer.resblocks)
            grid = visual.grid_size
            tokens = int(grid[0] * grid[1]) + 1
        except (AttributeError, TypeError):
            pass
    per_slice = tokens * width * 4 * (2 * depth + 16)
    return int(max(8, min(512, (free * 0.5) // per_slice)))


class StowGate:
    """Send files with :func:`medad.io.stow`, but stop trying once the server looks down.

    dicomweb-client retries a failed connection with exponential back-off (about 30 s per call), so a server that is
    down for the night would cost 30 s per series. After ``max_failures`` consecutive connection errors/time-outs,
    further calls fail at once (the series is recorded ``failed`` at stage ``stow`` and a rerun retries it).
    HTTP errors (bad URL, refused instances) are not counted: they are answers, not an unreachable server.
    """

    def __init__(self, url: str, max_failures: int = 2, send=None):
        from ..io.dicomweb import stow

        self.url, self.max_failures, self.failures = url, int(max_failures), 0
        self._send = send or stow

    def __call__(self, paths: Sequence[str | os.PathLike]):
        import requests

        if self.failures >= self.max_failures:
            raise ConnectionError(f"not sent: {self.url} was unreachable in the last {self.failures} attempts; "
                                  "rerun the same command when the server is back")
        try:
            result = self._send(self.url, paths)
        except (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError):
            self.failures += 1
            raise
        self.failures = 0
        return result


def write_series_outputs(sdir: Path, rec: mf.SeriesOutcome, volume, result, *, out: Path, dicom_out: bool,
                         stow: Optional[StowGate], overlays: int, provenance: dict,
                         seconds: dict[str, float]) -> mf.SeriesOutcome:
    """Write one series' outputs (:func:`medad.inference.write_outputs`), then its ``record.json`` (last). Never
    raises: errors become a failed record."""
    from ..inference import OutputOptions, result_scores, write_outputs

    t = time.perf_counter()
    stage = ""
    try:
        if result is not None:
            stage = "write"
            scores = result_scores(result)
            rec.n_slices, rec.volume_score = scores["n_slices"], scores["volume_score"]
            rec.top_slices, rec.top_slice_scores = scores["top_slices"], scores["top_slice_scores"]
            rec.slice_scores = scores["slice_scores"]
            written = write_outputs(result, volume, sdir, OutputOptions(overlays=overlays, dicom=dicom_out,
                                                                         provenance=provenance))
            prefix = sdir.relative_to(out).as_posix() + "/"
            outputs: dict[str, Any] = {k: (prefix + v if k in ("nifti", "pm", "seg") else v)
                                       for k, v in written.files.items()}
            outputs["pngs"] = [prefix + p for p in written.files["pngs"]]
            for old in sdir.glob("top*_slice*.png"):  # from an earlier run with other settings
                if (prefix + old.name) not in outputs["pngs"]:
                    old.unlink(missing_ok=True)
            rec.outputs = outputs
            if stow and "pm" in outputs:
                stage = "stow"
                res = stow([out / outputs["pm"], out / outputs["seg"]])
                outputs["stow"] = {"url": stow.url, "stored": len(res.stored)}
            rec.status, rec.stage, rec.error = "ok", "", ""
    except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
        rec.status, rec.stage, rec.error = "failed", stage, _one_line(e)
        log.warning("series %s failed at %s: %s", rec.key, stage, rec.error)
    rec.seconds = {**seconds, "write": round(time.perf_counter() - t, 3)}
    try:
        mf.write_record(sdir, rec)
    except OSError as e:
        log.error("cannot write the record of series %s in %s: %s", rec.key, sdir, e)
    return rec
