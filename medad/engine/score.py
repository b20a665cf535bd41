"""Batch scoring of PACS exports: every series under some folders -> anomaly maps, tables and a report.

``score(inputs, out_dir)`` (and ``medad score INPUT... --out DIR``) does, in order:

1. **Index** every file (:func:`medad.io.find_series`, header-only reads): series records, and one record per file
   saying which series it belongs to or why it is skipped. Optional filters (modality, body part, series
   description) drop whole series, which are reported as ``filtered``.
2. **Plan**: a series whose ``record.json`` exists, is ``ok`` and matches the current input files and settings
   (:func:`medad.engine.manifest.series_fingerprint`) is done and not scored again. The rest is sharded across
   ``torchrun`` ranks (balanced by slice count). Rank 0 plans, all ranks follow the same plan.
3. **Score**: worker processes (a ``torch.utils.data.DataLoader`` with ``workers`` processes) decode series with
   :func:`medad.io.load_series` while the main process runs :class:`medad.inference.VolumeRunner` on the previous
   one; a writer thread writes the NIfTI map, PNG overlays, optional DICOM PM + SEG and STOW while the next series
   is scored. Any error (unreadable pixels, irregular geometry, a write or STOW error) fails that series only: it gets
   a ``failed`` record with the stage and reason, and the batch goes on.
4. **Merge** (rank 0, after all ranks are done): ``results.csv``, ``manifest.jsonl``, ``report.html`` and
   ``summary.json`` are regenerated from the index and the records, so a resumed run gives the same tables as an
   uninterrupted one.

Python::

    from medad.engine.score import score
    summary = score(["/exports/night1"], "/results/night1", adapters="demo", modality="CT", workers=2)
    print(summary.n_scored, summary.n_failed, summary.results_csv)

Scale-out: ``torchrun --nproc_per_node 4 -m medad score /exports --out /results`` (all ranks must see the inputs and
the output folder, e.g. on a shared file system; ``gloo`` coordinates the ranks, each rank uses ``cuda:LOCAL_RANK``
when CUDA is available).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..io import SeriesIndex, SeriesRecord, find_series
from . import manifest as mf
from ._score_worker import (SeriesLoader, balanced_shards, check_shared_memory, default_batch_size, default_workers,
                            run_with_backoff)
from .report import write_report

__all__ = ["ScoreSummary", "ScoreConfigError", "score", "select_series"]

log = logging.getLogger(__name__)


class ScoreConfigError(ValueError):
    """The run cannot start: the output folder holds a run made with other settings or is in use by another run,
    an input does not exist, or a filter is invalid."""


@dataclass
class ScoreSummary:
    """Outcome of :func:`score` (the same on every rank).

    Attributes:
        out_dir: the output folder.
        n_files: input files indexed; ``files_by_status``: count per manifest status (scored/skipped/failed/pending).
        n_series: series found; ``n_selected``: after filters; ``n_filtered``: removed by filters.
        n_scored: series with an ok record (``n_reused`` of them from an earlier run); ``n_failed``: failed series;
            ``n_skipped``: series loaded but not scored (label maps).
        n_files_failed: damaged input files (truncated/unreadable) outside any series.
        skip_reasons: files not scored (skipped or failed), per reason code.
        failures: ``(series key, error)`` of failed series.
        results_csv, manifest, report: written paths. elapsed_s: wall time of this call.
    """

    out_dir: Path
    n_files: int = 0
    n_series: int = 0
    n_selected: int = 0
    n_filtered: int = 0
    n_scored: int = 0
    n_reused: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_files_failed: int = 0
    n_slices: int = 0
    files_by_status: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    results_csv: Optional[Path] = None
    manifest: Optional[Path] = None
    report: Optional[Path] = None
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every selected series was scored and no input file was damaged, else 1."""
        done = self.n_scored + self.n_skipped == self.n_selected
        return 0 if self.n_failed == 0 and self.n_files_failed == 0 and done else 1

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def text(self) -> str:
        """Human summary, several lines."""
        lines = [f"{self.n_files} files, {self.n_series} series ({self.n_filtered} filtered out): "
                 f"{self.n_scored} scored ({self.n_reused} from an earlier run), {self.n_failed} failed, "
                 f"{self.n_skipped} skipped (label maps); "
                 f"{self.n_files_failed} damaged files",
                 "files: " + ", ".join(f"{k} {v}" for k, v in sorted(self.files_by_status.items()))]
        if self.skip_reasons:
            lines.append("files not scored, by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(self.skip_reasons.items())))
        lines += [f"FAILED {k}: {e}" for k, e in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"... and {len(self.failures) - 20} more failed series (see results.csv)")
        lines.append(f"results: {self.results_csv}  manifest: {self.manifest}  report: {self.report}")
        return "\n".join(lines)


def _split_list(value: Optional[str | Sequence[str]]) -> Optional[list[str]]:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip().upper() for s in items if s.strip()] or None


def select_series(series: Sequence[SeriesRecord], modality=None, body_part=None,
                  series_description: Optional[str] = None,
                  exclude: Optional[Sequence[str]] = None) -> tuple[list[SeriesRecord], dict[str, str]]:
    """Apply the filters; returns ``(kept, {key: why filtered})``.

    Args:
        modality: ``"CT"``, ``"CT,MR"`` or a list (case-insensitive, exact).
        body_part: BodyPartExamined values, as ``modality``.
        series_description: regular expression searched (case-insensitive) in SeriesDescription.
        exclude: glob patterns (``"*mask*"``, ``"*/derived/*"``) matched against each file's path and name; a
            series whose files all match is filtered out (e.g. label maps stored next to NIfTI images).
    """
    mods, parts = _split_list(modality), _split_list(body_part)
    rx = re.compile(series_description, re.I) if series_description else None
    pats = [exclude] if isinstance(exclude, str) else list(exclude or [])
    kept, filtered = [], {}
    for s in series:
        hit = next((p for p in pats if all(fnmatch.fnmatch(f, p) or fnmatch.fnmatch(os.path.basename(f), p)
                                           for f in s.files)), None)
        if hit:
            filtered[s.key] = f"excluded by pattern {hit!r}"
        elif mods and s.modality.upper() not in mods:
            filtered[s.key] = f"modality {s.modality or '(none)'!r} not in {mods}"
        elif parts and s.body_part.upper() not in parts:
            filtered[s.key] = f"body part {s.body_part or '(none)'!r} not in {parts}"
        elif rx and not rx.search(s.series_description):
            filtered[s.key] = f"series description does not match {series_description!r}"
        else:
            kept.append(s)
    return kept, filtered


@dataclass
class _Plan:
    index: SeriesIndex
    selected: list[SeriesRecord]
    filtered: dict[str, str]
    dirs: dict[str, str]
    fingerprints: dict[str, str]
    todo: list[str]
    error: str = ""


def _without_outputs(index: SeriesIndex, out: Path) -> SeriesIndex:
    """Drop the files inside the output folder (``--out`` inside an input): our own maps are not inputs, and the
    tables must not change between the first run and a rerun."""
    prefix = str(out.resolve()) + os.sep
    real = functools.lru_cache(maxsize=None)(os.path.realpath)  # one call per folder, symlinks resolved
    inside = {f.path for f in index.files if (real(os.path.dirname(f.path)) + os.sep).startswith(prefix)}
    if not inside:
        return index
    log.info("ignoring %d files inside the output folder %s", len(inside), out)
    return SeriesIndex(series=[s for s in index.series if not all(f in inside for f in s.files)],
                       files=[f for f in index.files if f.path not in inside])


def _make_plan(inputs, out: Path, config: dict, *, modality, body_part, series_description, exclude, overwrite,
               retry_failed, stow, progress) -> _Plan:
    mf.check_run_config(out, config, overwrite)  # before indexing: a big export takes a while to index
    mf.remove_stale_temporaries(out)
    index = _without_outputs(find_series(inputs, progress=progress), out)
    selected, filtered = select_series(index.series, modality, body_part, series_description, exclude)
    digest = mf.config_hash(config)
    dirs = {s.key: mf.series_dir_name(s.key, s.modality, s.series_number) for s in index.series}
    fps = {s.key: mf.series_fingerprint(s.files, digest) for s in selected}
    todo = []
    for s in selected:
        rec = mf.read_record(out / "series" / dirs[s.key])  # records of other settings have another fingerprint
        done = rec is not None and rec.fingerprint == fps[s.key] and (rec.ok or rec.skipped or not retry_failed)
        if done and stow and rec.ok and "pm" in rec.outputs and rec.outputs.get("stow", {}).get("url") != stow:
            done = False  # scored before, but not sent to this server yet
        if not done:
            todo.append(s.key)
    return _Plan(index, selected, filtered, dirs, fps, todo)


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
    stow: Optional[str] = None,
    workers: Optional[int] = None,
    device: Optional[str] = None,
    batch_size: Optional[int] = None,
    top_k: int = 5,
    overlays: int = 3,
    axis: str = "axial",
    intensity: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    retry_failed: bool = True,
    progress: bool = True,
    dry_run: bool = False,
    detector=None,
) -> ScoreSummary:
    """Score every series under ``inputs`` into ``out_dir`` (resumable; see the module docstring).

    Args:
        inputs: folders and/or files (walked recursively).
        out_dir: output folder (created). Rerunning the same call finishes an interrupted run.
        adapters, backbone, weights, object_name, precision: the model, as :func:`medad.load_detector`
            (``adapters="demo"``: the embedded demo model, not for clinical use).
        modality, body_part: keep only these (``"CT"``, ``"CT,MR"``); series_description: regex to keep;
            exclude: glob patterns of files not to score (e.g. ``["*mask*"]``), see :func:`select_series`.
        dicom_out: also write a DICOM Parametric Map and a BINARY SEG per DICOM series.
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
        detector: an already built detector (then ``adapters``/``backbone``/... are ignored).

    Returns:
        :class:`ScoreSummary` (``summary.exit_code`` is 0 only when nothing failed).
    """
    from .distributed import barrier, init_distributed
    from ..inference import VolumeRunner, provenance

    t0 = time.perf_counter()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(Path(p)) for p in inputs]
    dicom_out = bool(dicom_out or stow)
    info = init_distributed(device, timeout_s=7 * 24 * 3600)
    dist_on = info.distributed
    dev = info.device if (dist_on or device is None) else torch.device(device)

    if detector is None:
        import medad

        detector = medad.load_detector(backbone=backbone, weights=weights, adapters=adapters,
                                       object_name=object_name, device=str(dev), precision=precision)

    runner = VolumeRunner(detector, batch_size=batch_size or default_batch_size(dev, detector), axis=axis,
                          intensity=intensity, top_k=top_k)
    prov = provenance(detector, runner)
    config = mf.run_config(prov, overlays=overlays, dicom_out=dicom_out)
    plan, lock = None, None
    try:
        if info.main:
            try:
                lock = mf.acquire_run_lock(out)
                plan = _make_plan(inputs, out, config, modality=modality, body_part=body_part,
                                  series_description=series_description, exclude=exclude, overwrite=overwrite,
                                  retry_failed=retry_failed, stow=stow, progress=progress)
            except (mf.RunConfigError, mf.OutputBusyError, FileNotFoundError, re.error) as e:
                plan = _Plan(SeriesIndex(), [], {}, {}, {}, [], error=f"{type(e).__name__}: {e}")
        plan = _broadcast(plan, dist_on)
        if plan.error:
            raise ScoreConfigError(plan.error)

        by_key = {s.key: s for s in plan.selected}
        todo = [by_key[k] for k in plan.todo]
        mine = balanced_shards(todo, info.world_size)[info.rank]
        bs = runner.batch_size
        nworkers = default_workers() if workers is None else int(workers)
        log.info("rank %d/%d: %d series to score (%d already done), device %s, batch %d, %d decoding workers",
                 info.rank, info.world_size, len(mine), len(plan.selected) - len(todo), dev, bs, nworkers)
        shm_warning = check_shared_memory(mine, nworkers)
        if shm_warning and not dry_run:
            log.warning(shm_warning)
        if mine and not dry_run:
            _score_shard(mine, out, plan, runner, prov, dicom_out=dicom_out, stow=stow, overlays=overlays,
                         workers=nworkers, progress=progress, position=info.rank)
        barrier()
        summary = None
        if info.main:
            summary = _merge(out, plan, n_todo=len(todo))
            summary.elapsed_s = round(time.perf_counter() - t0, 3)
            mf.write_text_atomic(out / "summary.json",
                                 json.dumps(summary.to_dict(), indent=1, sort_keys=True) + "\n")
    finally:
        mf.release_run_lock(lock)
    return _broadcast(summary, dist_on)


def _score_shard(series: list[SeriesRecord], out: Path, plan: _Plan, runner, prov: dict, *, dicom_out, stow,
                 overlays, workers, progress, position) -> None:
    """Score this rank's series: decode in workers, score here, write in a background thread."""
    from tqdm.auto import tqdm

    from ._score_worker import StowGate, write_series_outputs

    bar = tqdm(total=len(series), desc="series scored" if position == 0 else f"series scored (rank {position})",
               unit="series", position=position, disable=not progress, leave=True)
    pending: Optional[Future] = None
    gate = StowGate(stow) if stow else None

    counts: dict[str, int] = {}

    def finish(fut: Optional[Future]) -> None:
        if fut is not None:
            rec = fut.result()  # write_series_outputs never raises: errors become failed records
            counts[rec.status] = counts.get(rec.status, 0) + 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medad-writer") as pool:
        for record, volume, error, load_s in SeriesLoader(series, workers=workers):
            sdir = out / "series" / plan.dirs[record.key]
            base = mf.SeriesOutcome(key=record.key, dir=plan.dirs[record.key], status="failed",
                                    fingerprint=plan.fingerprints[record.key], series=_series_fields(record))
            t = time.perf_counter()
            result = None
            if error.startswith("skip:"):
                base.status, base.stage, base.error = "skipped", "load", error[5:]
            elif error:
                base.stage, base.error = "load", error
            else:
                try:
                    result = run_with_backoff(runner, volume)
                except Exception as e:  # noqa: BLE001 - one bad series must not stop the batch
                    base.stage, base.error = "score", f"{type(e).__name__}: {_one_line(e)}"
                    log.warning("series %s failed while scoring: %s", record.key, base.error)
            finish(pending)  # keep at most one series in the writer: memory stays bounded
            pending = pool.submit(write_series_outputs, sdir, base, volume, result, out=out, dicom_out=dicom_out,
                                  stow=gate, overlays=overlays, provenance=prov,
                                  seconds={"load": round(load_s, 3), "score": round(time.perf_counter() - t, 3)})
        finish(pending)
    bar.close()


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500]


def _series_fields(s: SeriesRecord) -> dict:
    d = s.to_dict()
    d.pop("files", None)
    return d


def _merge(out: Path, plan: _Plan, n_todo: int) -> ScoreSummary:
    """Regenerate results.csv, manifest.jsonl and report.html from the index and the records."""
    outcomes: dict[str, mf.SeriesOutcome] = {}
    rows = []
    for s in plan.index.series:
        fields = _series_fields(s)
        if s.key in plan.filtered:
            rows.append(mf.results_row(None, fields, plan.dirs[s.key], status="filtered",
                                       error=plan.filtered[s.key]))
            continue
        rec = mf.read_record(out / "series" / plan.dirs[s.key])
        if rec is not None and rec.fingerprint != plan.fingerprints[s.key]:
            rec = None
        if rec is not None:
            outcomes[s.key] = rec
        rows.append(mf.results_row(rec, fields, plan.dirs[s.key], status="pending",
                                   error="not scored yet (stopped run or --dry-run): run the same command to score it"))
    results = mf.write_results_csv(out / "results.csv", rows)
    entries = mf.file_entries(plan.index, outcomes, plan.filtered, plan.dirs)
    manifest = mf.write_manifest(out / "manifest.jsonl", entries)
    report = write_report(out / "report.html", [outcomes[s.key] for s in plan.selected if s.key in outcomes],
                          n_files=len(entries), filtered=len(plan.filtered))
    by_status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for e in entries:
        by_status[e["status"]] = by_status.get(e["status"], 0) + 1
        if e["status"] != "scored" and e.get("reason"):
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    ok = [o for o in outcomes.values() if o.ok]
    failed = [o for o in outcomes.values() if not o.ok and not o.skipped]
    return ScoreSummary(
        out_dir=out, n_files=len(entries), n_series=len(plan.index.series), n_selected=len(plan.selected),
        n_filtered=len(plan.filtered), n_scored=len(ok), n_reused=len(plan.selected) - n_todo, n_failed=len(failed),
        n_skipped=sum(1 for o in outcomes.values() if o.skipped),
        n_files_failed=sum(1 for f in plan.index.files if f.status != "series" and f.reason in mf.FAILED_REASONS),
        n_slices=sum(o.n_slices for o in ok), files_by_status=by_status, skip_reasons=reasons,
        failures=[(o.key, f"[{o.stage}] {o.error}") for o in failed], results_csv=results, manifest=manifest,
        report=report)
