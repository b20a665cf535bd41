"""Step 3b-4 of ``medad score``: score this rank's series and write their outputs.

:func:`score_series` runs the :class:`~medad.inference.VolumeRunner` in this process on the volumes
:class:`~medad.batch.load.SeriesLoader` decodes ahead, and hands each result to a writer thread
(:func:`write_series`: :func:`medad.inference.write_outputs`, optional STOW, then the series' ``record.json``) while the
next series is scored. Any error (unreadable pixels, irregular geometry, a write or STOW error) fails that series
only: it gets a ``failed`` record with the stage and reason, and the batch goes on; except an output folder that
cannot be written at all (disk full, quota, read-only): that stops the run with
:class:`~medad.batch.records.OutputWriteError` (finished series are kept; a rerun with space finishes the job).
Sharding across ``torchrun`` ranks (:func:`balanced_shards`) and device-sized slice batches
(:func:`default_batch_size`) are decided here too.

Geometry rule (:func:`choose_axis`): a series too thin along the requested axis (its slices would be less than
:data:`MIN_SLICE_SIDE` voxels on a side, e.g. a single sagittal slice or a 3-slice coronal series sliced axially) is
scored in its own acquisition plane, with a warning in its row; if that is too small too, it is skipped
(``too_small``). A series whose every slice is background after intensity scaling fails (``no_signal``): a score of 0
would rank it as the most normal study.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import torch

from ..inference import OutputOptions, result_scores, write_outputs
from ..inference.table import redact
from ..io import SeriesRecord
from . import records
from .load import SeriesLoader, one_line

__all__ = ["MIN_SLICE_SIDE", "StowGate", "balanced_shards", "choose_axis", "default_batch_size", "run_with_backoff",
           "score_series", "write_series"]

log = logging.getLogger("medad.batch")

#: Slices less than this many voxels on a side are not scored (the model would see a line of pixels).
MIN_SLICE_SIDE = 16
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def choose_axis(volume, axis: str) -> tuple[str | None, str]:
    """``(axis to score along, note)``: ``axis`` when its slices are big enough, else the series' own acquisition
    plane (the RAS axis of its third voxel axis) with a ``"own_plane: ..."`` note, else ``(None, "too_small: ...")``.
    """
    from ..transforms.slicing import AXES, RASSlicer, ras_orientation

    shape, space = tuple(volume.shape[1:]), volume.meta.get("space")
    side = min(RASSlicer(shape, volume.affine, axis, space).slice_shape)
    if side >= MIN_SLICE_SIDE:
        return axis, ""
    perm, _ = ras_orientation(volume.affine, space)
    own = next(name for name, j in AXES.items() if perm[j] == 2)
    own_side = RASSlicer(shape, volume.affine, own, space).slice_shape
    dims = "x".join(map(str, shape))
    if own != axis and min(own_side) >= MIN_SLICE_SIDE:
        return own, (f"own_plane: {dims} voxels, {axis} slices would be {side} voxels wide: scored in its own "
                     f"{own} plane instead")
    return None, (f"too_small: {dims} voxels: slices of {min(own_side)} voxels or less on a side are too small "
                  "to score")


def _fatal(e: BaseException | None) -> OSError | None:
    """The OSError in ``e``'s chain that means the output folder cannot be written at all (disk full, quota,
    read-only, no permission), else None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _FATAL_ERRNOS:
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


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


def balanced_shards(series: Sequence[SeriesRecord], n: int) -> list[list[SeriesRecord]]:
    """Split ``series`` into ``n`` shards of about equal slice count (greedy, largest first; deterministic).

    Each shard keeps the original order.
    """
    def size(r: SeriesRecord) -> int:
        return max(int((r.shape[-1] if r.shape else r.n_files) or 1), 1)

    loads = [0] * n
    owner: dict[int, int] = {}
    for i in sorted(range(len(series)), key=lambda i: (-size(series[i]), i)):
        r = min(range(n), key=lambda k: (loads[k], k))
        owner[i] = r
        loads[r] += size(series[i])
    return [[series[i] for i in range(len(series)) if owner[i] == r] for r in range(n)]


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
        from ..io import stow

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


def write_series(sdir: Path, rec: records.SeriesOutcome, volume, result, *, out: Path,
                 options: OutputOptions, stow: Optional[StowGate], seconds: dict[str, float]) -> records.SeriesOutcome:
    """Write one series' outputs (:func:`medad.inference.write_outputs`), send them (``stow``), then its
    ``record.json`` (last). Never raises: errors become a failed record.

    Args:
        sdir: the series folder (under ``out/series``). rec: the record prefilled with ids (status ``failed`` with
            stage/error when loading or scoring failed; then only the record is written).
        volume: the source MetaTensor ``[1, X, Y, Z]``. result: its :class:`medad.inference.VolumeResult` or None.
        options: what to write (overlays, DICOM, provenance). seconds: load/score timings for the record.
    """
    t = time.perf_counter()
    stage = ""
    try:
        if result is not None:
            stage = "write"
            scores = result_scores(result)
            rec.n_slices, rec.volume_score = scores["n_slices"], scores["volume_score"]
            rec.top_slices, rec.top_slice_scores = scores["top_slices"], scores["top_slice_scores"]
            rec.slice_scores = scores["slice_scores"]
            rec.flagged, rec.raw_volume_score = scores["flagged"], scores["raw_volume_score"]
            written = write_outputs(result, volume, sdir, options)
            prefix = sdir.relative_to(out).as_posix() + "/"  # record paths are relative to OUT
            outputs: dict[str, Any] = {k: (prefix + v if k in ("nifti", "sidecar", "pm", "pm_int", "seg") else v)
                                       for k, v in written.files.items()}
            outputs["pngs"] = [prefix + p for p in written.files["pngs"]]
            for old in sdir.glob("top*_slice*.png"):  # from an earlier run with other settings
                if prefix + old.name not in outputs["pngs"]:
                    old.unlink(missing_ok=True)
            rec.outputs, rec.grading, rec.uids, rec.provenance = outputs, written.grading, written.uids, \
                written.provenance
            if stow and "seg" in outputs:
                stage = "stow"
                res = stow([out / outputs[k] for k in ("pm", "pm_int", "seg") if k in outputs])
                outputs["stow"] = {"url": stow.url, "stored": len(res.stored)}
            rec.status, rec.stage, rec.error = "ok", "", ""
    except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
        rec.status, rec.stage, rec.error = "failed", stage, one_line(e)
        fatal = _fatal(e)
        log.warning("series %s failed at %s: %s", rec.dir, stage, redact(rec.error))  # no paths in logs
    else:
        fatal = None
    rec.seconds = {**seconds, "write": round(time.perf_counter() - t, 3)}
    try:
        records.write_record(sdir, rec)
    except OSError as e:
        log.error("cannot write the record of series %s: %s", rec.dir, redact(one_line(e)))
        fatal = fatal or _fatal(e) or e
    if fatal is not None:
        raise records.OutputWriteError(out, fatal)
    return rec


def _score_one(runner, volume, base: records.SeriesOutcome):
    """Score one loaded volume (in its own plane when too thin); the result, or None with ``base`` marked."""
    notes = list(volume.meta.get("warnings") or [])
    try:
        axis, note = choose_axis(volume, runner.axis)
        if axis is None:
            base.status, base.stage, base.error = "skipped", "score", note
            return None
        if note:
            notes.append(note)
            runner = copy.copy(runner)  # same detector and settings, another axis for this series only
            runner.axis = axis
        result = run_with_backoff(runner, volume)
    except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
        base.stage, base.error = "score", one_line(e)
        log.warning("series %s failed while scoring: %s", base.dir, redact(base.error))
        return None
    base.warning = "; ".join(notes)
    if result.n_slices and bool(result.skipped.all()):
        base.stage, base.error = "score", ("no_signal: every slice is background after intensity scaling (blank, "
                                           "or values outside the intensity window): nothing to score")
        return None
    return result


def score_series(series: Sequence[SeriesRecord], out: Path, runner, *, dirs: dict[str, str],
                 fingerprints: dict[str, str], options: OutputOptions, stow: Optional[str] = None, workers: int = 2,
                 progress: bool = True, position: int = 0) -> dict[str, int]:
    """Score ``series`` into ``out/series/<dirs[key]>``: decode in workers, score here, write in a background thread.

    Returns:
        Count of records written per status.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(series), desc="series scored" if position == 0 else f"series scored (rank {position})",
               unit="series", position=position, disable=not progress, leave=True)
    pending: Optional[Future] = None
    gate = StowGate(stow) if stow else None
    counts: dict[str, int] = {}

    def finish(fut: Optional[Future]) -> None:
        if fut is not None:
            rec = fut.result()  # write_series never raises: errors become failed records
            counts[rec.status] = counts.get(rec.status, 0) + 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medad-writer") as pool:
        for record, volume, error, load_s in SeriesLoader(series, workers=workers):
            fields = record.to_dict()
            fields.pop("files", None)
            base = records.SeriesOutcome(key=record.key, dir=dirs[record.key], status="failed",
                                         fingerprint=fingerprints[record.key], series=fields)
            t = time.perf_counter()
            result = None
            if error.startswith("skip:"):
                base.status, base.stage, base.error = "skipped", "load", error[5:]
            elif error:
                base.stage, base.error = "load", error
            else:
                result = _score_one(runner, volume, base)
            finish(pending)  # keep at most one series in the writer: memory stays bounded
            pending = pool.submit(write_series, out / "series" / dirs[record.key], base, volume, result, out=out,
                                  options=options, stow=gate,
                                  seconds={"load": round(load_s, 3), "score": round(time.perf_counter() - t, 3)})
        finish(pending)
    bar.close()
    return counts
