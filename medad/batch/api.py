"""Batch scoring of PACS exports: every series under some folders -> anomaly maps, tables and a report.

``score(inputs, out_dir)`` (and ``medad score INPUT... --out DIR``) runs these steps in order, one module each:

1. **Plan** (:mod:`~medad.batch.plan`): index every file (:func:`medad.io.find_series`, header-only reads), apply the
   filters (modality, body part, series description, exclude patterns: filtered series are reported), and list the
   series without a valid record (:mod:`~medad.batch.records`: a record made from the same input files with the same
   settings means done). Rank 0 plans, all ranks follow the same plan, sharded by slice count.
2. **Load** (:mod:`~medad.batch.load`): worker processes decode series with :func:`medad.io.load_series` while
3. **Score and write** (:mod:`~medad.batch.execute`): the main process runs :class:`medad.inference.VolumeRunner`
   on the previous one, and a writer thread writes its outputs with :func:`medad.inference.write_outputs` (NIfTI map,
   PNG overlays, optional DICOM PM + SEG), sends them (STOW) and writes its ``record.json``. Any error fails that
   series only, with the stage and reason.
4. **Merge** (:mod:`~medad.batch.merge`, rank 0, after all ranks are done): ``results.csv``, ``manifest.jsonl`` and
   ``summary.json`` are regenerated from the index and the records, so a resumed run gives the same tables.
5. **Report** (:mod:`~medad.batch.report`): ``report.html``.

Python::

    from medad.batch import score
    summary = score(["/exports/night1"], "/results/night1", adapters="demo", modality="CT", workers=2)
    print(summary.n_scored, summary.n_failed, summary.results_csv)

Scale-out: ``torchrun --nproc_per_node 4 -m medad score /exports --out /results`` (all ranks must see the inputs and
the output folder, e.g. on a shared file system; ``gloo`` coordinates the ranks, each rank uses ``cuda:LOCAL_RANK``
when CUDA is available).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from ..inference import OutputOptions, VolumeRunner, provenance
from . import records
from .execute import balanced_shards, default_batch_size, score_series
from .load import check_shared_memory, default_workers
from .merge import ScoreSummary, merge, write_summary
from .plan import Plan, make_plan
from .report import write_report

__all__ = ["ScoreConfigError", "ScoreSummary", "score"]

log = logging.getLogger("medad.batch")


class ScoreConfigError(ValueError):
    """The run cannot start: the output folder is a file, cannot be created or written, holds a run made with other
    settings or is in use by another run, an input does not exist, or a filter is invalid."""


def _prepare_out(out_dir) -> Path:
    """Create the output folder and check that it can be written; :class:`ScoreConfigError` says why not."""
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ScoreConfigError(f"--out {out_dir} is a file, not a folder: give a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".medad-write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        why = f"{os.strerror(e.errno)} (errno {e.errno})" if e.errno else type(e).__name__
        raise ScoreConfigError(f"cannot write to the output folder {out_dir}: {why}. Choose a writable folder with "
                               "free space.") from None
    return out


def _broadcast(obj: Any, dist_on: bool) -> Any:
    if not dist_on:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def score(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    adapters: Optional[str | os.PathLike] = "demo",
    backbone: Optional[str] = None,
    weights: Optional[str | os.PathLike] = None,
    object_name: Optional[str] = None,
    modality: Optional[str | Sequence[str]] = None,
    body_part: Optional[str | Sequence[str]] = None,
    series_description: Optional[str] = None,
    exclude: Optional[Sequence[str]] = None,
    dicom_out: bool = False,
    pm: str = "float",
    stow: Optional[str] = None,
    workers: Optional[int] = None,
    device: Optional[str] = None,
    batch_size: Optional[int] = None,
    top_k: int = 5,
    overlays: int = 3,
    axis: str = "axial",
    intensity: str = "auto",
    precision: str = "auto",
    overwrite: bool = False,
    retry_failed: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    detector=None,
    index_workers: Optional[int] = None,
    show_paths: bool = False,
) -> ScoreSummary:
    """Score every series under ``inputs`` into ``out_dir`` (resumable; see the module docstring).

    Args:
        inputs: folders and/or files (walked recursively).
        out_dir: output folder (created). Rerunning the same call finishes an interrupted run.
        adapters, backbone, weights, object_name, precision: the model, as :func:`medad.load_detector`
            (``adapters="demo"``: the embedded demo model, not for clinical use).
        modality, body_part: keep only these (``"CT"``, ``"CT,MR"``); series_description: regex to keep;
            exclude: glob patterns of files not to score (e.g. ``["*mask*"]``), see :func:`medad.batch.plan.select_series`.
        dicom_out: also write a DICOM Parametric Map and a BINARY SEG per DICOM series.
        pm: the Parametric Map: ``"float"`` (float32), ``"integer"`` (uint16 + Real World Value Mapping, for PACS
            and viewers without float pixels) or ``"both"``.
        stow: DICOMweb root URL: send the PM and SEG there (implies ``dicom_out``).
        workers: decoding processes (0 = decode in the main process); default half the CPUs, at most 4.
        device: ``"cpu"``, ``"cuda"``; default CUDA when available (``cuda:LOCAL_RANK`` under torchrun).
        batch_size: slices per model call; default sized to the device.
        top_k: slices in ``top_slices`` and in the volume score; overlays: how many of them get a PNG.
        axis, intensity: slicing axis and intensity rule of :class:`medad.inference.VolumeRunner`.
        overwrite: accept an ``out_dir`` made with other settings (its series are then all rescored, since their
            records do not match the new settings; rerunning with ``overwrite`` after an interruption still resumes).
        retry_failed: rescore series whose earlier record is ``failed`` (default); False keeps them failed.
        progress: tqdm bars for indexing and for series.
        dry_run: index and plan only: the tables list the series still to score as ``pending``.
        show_paths: name non-DICOM inputs by path and keep file/folder names in errors in ``results.csv``,
            ``report.html``, ``summary.json`` (by default they are anonymous: exports name folders after patients).
        detector: an already built detector (then ``adapters``/``backbone``/... are ignored).
        index_workers: header-reading processes for indexing (default: the CPU count, at most 8; exports under 2,000
            files are indexed in this process).

    Returns:
        :class:`ScoreSummary` (``summary.exit_code`` is 0 only when nothing failed).

    Raises:
        ScoreConfigError: the run cannot start (``--out`` is a file or not writable, other settings, another run).
        medad.batch.records.OutputWriteError: the output folder became unwritable (disk full) during the run;
            finished series are kept and a rerun finishes the job.
    """
    from ..training.distributed import barrier, init_distributed

    t0 = time.perf_counter()
    out = _prepare_out(out_dir)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(Path(p)) for p in inputs]
    dicom_out = bool(dicom_out or stow)
    info = init_distributed(device, timeout_s=7 * 24 * 3600)
    dist_on = info.distributed
    dev = info.device if (dist_on or device is None) else torch.device(device)

    # the model, its runner and their provenance: what run.json, the UIDs and every record are made of
    if detector is None:
        import medad

        detector = medad.load_detector(backbone=backbone, weights=weights, adapters=adapters,
                                       object_name=object_name, device=str(dev), precision=precision)
    runner = VolumeRunner(detector, batch_size=batch_size or default_batch_size(dev, detector), axis=axis,
                          intensity=intensity, top_k=top_k)
    prov = provenance(detector, runner)
    config = records.run_config(prov, overlays=overlays, dicom_out=dicom_out, pm=pm)
    options = OutputOptions(overlays=overlays, dicom=dicom_out, pm=pm, provenance=prov)

    plan, lock, summary = None, None, None
    try:
        # 1. plan (rank 0)
        if info.main:
            try:
                lock = records.acquire_run_lock(out)
                plan = make_plan(inputs, out, config, modality=modality, body_part=body_part,
                                 index_workers=index_workers,
                                 series_description=series_description, exclude=exclude, overwrite=overwrite,
                                 retry_failed=retry_failed, stow=stow, progress=progress)
            except (records.RunConfigError, records.OutputBusyError, FileNotFoundError, re.error) as e:
                plan = Plan(error=f"{type(e).__name__}: {e}")
            except OSError as e:  # run.json / run.lock cannot be written: disk full, read-only
                plan = Plan(error=f"cannot write to the output folder {out}: "
                                  f"{os.strerror(e.errno) if e.errno else type(e).__name__}; free space and rerun")
        plan = _broadcast(plan, dist_on)
        if plan.error:
            raise ScoreConfigError(plan.error)

        # 2-3. load, score and write this rank's shard
        todo = plan.todo_series()
        mine = balanced_shards(todo, info.world_size)[info.rank]
        nworkers = default_workers() if workers is None else int(workers)
        log.info("rank %d/%d: %d series to score (%d already done), device %s, batch %d, %d decoding workers",
                 info.rank, info.world_size, len(mine), len(plan.selected) - len(todo), dev, runner.batch_size,
                 nworkers)
        shm_warning = check_shared_memory(mine, nworkers)
        if shm_warning and not dry_run:
            log.warning(shm_warning)
        stopped = None
        if mine and not dry_run:
            try:
                score_series(mine, out, runner, dirs=plan.dirs, fingerprints=plan.fingerprints, options=options,
                             stow=stow, workers=nworkers, progress=progress, position=info.rank)
            except records.OutputWriteError as e:  # disk full: still try to write the tables of what is done
                stopped = e
        barrier()

        # 4-5. merge and report (rank 0)
        if info.main:
            try:
                summary, outcomes = merge(out, plan, n_todo=len(todo), provenance=prov, show_paths=show_paths)
                summary.report = write_report(out / "report.html", outcomes, n_files=summary.n_files,
                                              filtered=summary.n_filtered, provenance=prov, show_paths=show_paths)
                summary.elapsed_s = round(time.perf_counter() - t0, 3)
                write_summary(summary)
            except OSError as e:
                raise (stopped or records.OutputWriteError(out, e, what="tables (results.csv, manifest.jsonl, "
                                                                         "report.html, summary.json)")) from e
        if stopped is not None:
            raise stopped
    finally:
        records.release_run_lock(lock)
    return _broadcast(summary, dist_on)
