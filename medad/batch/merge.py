"""Step 5 of ``medad score``: the run's tables, regenerated from the index and the series records.

:func:`merge` reads every series' ``record.json`` and writes ``results.csv`` (one row per series found, the columns of
:data:`medad.inference.RESULTS_COLUMNS`) and ``manifest.jsonl`` (one line per input file, with its status and reason),
and returns the run's :class:`ScoreSummary` (written as ``summary.json`` by :func:`write_summary`). Since everything
is regenerated, a resumed run gives the same tables as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..inference import results_row, write_results_csv
from ..inference.table import redact
from ..io import DAMAGE_REASONS
from ..io._atomic import write_text_atomic
from . import records
from .plan import Plan

__all__ = ["ScoreSummary", "file_entries", "merge", "series_reason", "write_manifest", "write_summary"]

_PENDING = "not scored yet (stopped run or --dry-run): run the same command to score it"


@dataclass
class ScoreSummary:
    """Outcome of :func:`medad.batch.score` (the same on every rank).

    Attributes:
        out_dir: the output folder.
        n_files: input files indexed; ``files_by_status``: count per manifest status (scored/skipped/failed/pending).
        n_series: series found (loadable or rejected at indexing); ``n_selected``: loadable series after the filters;
            ``n_filtered``: series removed by the filters.
        n_scored: series with an ok record (``n_reused`` of them from an earlier run; ``n_warned`` of them with a
            warning, e.g. NaN voxels); ``n_failed``: failed series (damaged data: at indexing, loading, scoring or
            writing); ``n_skipped``: series that are not something to score (label maps, localizers, non-image
            objects, projections, ...).
        n_files_failed: damaged input files (:data:`medad.io.DAMAGE_REASONS`) outside the filtered series.
        series_reasons: series not scored, per reason code; skip_reasons: files not scored, per reason code.
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
    n_warned: int = 0
    n_pending: int = 0
    files_by_status: dict[str, int] = field(default_factory=dict)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    series_reasons: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)
    results_csv: Optional[Path] = None
    manifest: Optional[Path] = None
    report: Optional[Path] = None
    elapsed_s: float = 0.0

    @property
    def exit_code(self) -> int:
        """0 when every series that could be scored was scored and nothing was damaged (no failed series, no damaged
        file, nothing pending), else 1."""
        return 0 if self.n_failed == 0 and self.n_files_failed == 0 and self.n_pending == 0 else 1

    def verdict(self) -> str:
        """The last line of ``medad score``: the exit code and why."""
        if self.exit_code == 0:
            extra = f"; {self.n_skipped} series are not images to score (see results.csv)" if self.n_skipped else ""
            warned = f" ({self.n_warned} with a warning)" if self.n_warned else ""
            return f"exit code 0: all {self.n_scored} scorable series scored{warned}{extra}"
        parts = []
        if self.n_failed:
            parts.append(f"{self.n_failed} series failed")
        if self.n_files_failed:
            parts.append(f"{self.n_files_failed} input files are damaged")
        if self.n_pending:
            parts.append(f"{self.n_pending} series not scored yet (rerun the same command)")
        return (f"exit code 1: {', '.join(parts)}; {self.n_scored} series scored. See results.csv (error column) and "
                "manifest.jsonl (reason per file)")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def text(self) -> str:
        """Human summary, several lines."""
        lines = [f"{self.n_files} files, {self.n_series} series ({self.n_filtered} filtered out): "
                 f"{self.n_scored} scored ({self.n_reused} from an earlier run), {self.n_failed} failed, "
                 f"{self.n_skipped} skipped (not images to score); "
                 f"{self.n_files_failed} damaged files",
                 "files: " + ", ".join(f"{k} {v}" for k, v in sorted(self.files_by_status.items()))]
        if self.series_reasons:
            lines.append("series not scored, by reason: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.series_reasons.items())))
        if self.skip_reasons:
            lines.append("files not scored, by reason: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.skip_reasons.items())))
        lines += [f"FAILED {k}: {e}" for k, e in self.failures[:20]]
        if len(self.failures) > 20:
            lines.append(f"... and {len(self.failures) - 20} more failed series (see results.csv)")
        lines.append(f"results: {self.results_csv}  manifest: {self.manifest}  report: {self.report}")
        return "\n".join(lines)


def file_entries(index, outcomes: dict[str, records.SeriesOutcome], filtered: dict[str, str],
                 dirs: dict[str, str]) -> list[dict]:
    """One manifest entry per input file (in the index's walk order).

    Statuses: ``scored`` (its series has an ok record), ``failed`` (its series failed, or the file is damaged:
    :data:`medad.io.DAMAGE_REASONS`), ``skipped`` (not part of a volume to score, its series was filtered out, or it
    is a label map), and ``pending`` (its series has no record: only when a run stopped early).

    Args:
        index: :class:`medad.io.SeriesIndex`.
        outcomes: series key -> record.
        filtered: series key -> why the series was filtered out (``--modality`` etc.).
        dirs: series key -> output folder name.
    """
    out = []
    for f in index.files:
        e: dict[str, Any] = {"path": f.path}
        if f.status != "series":
            damaged = f.reason in DAMAGE_REASONS and f.series_key not in filtered
            e.update(status="failed" if damaged else "skipped", reason=f.reason, detail=f.detail,
                     series_key=f.series_key)
            if f.series_key in dirs:
                e["output_dir"] = f"series/{dirs[f.series_key]}"
        elif f.series_key in filtered:
            e.update(status="skipped", reason="filtered", detail=filtered[f.series_key], series_key=f.series_key)
        else:
            o = outcomes.get(f.series_key)
            if o is None:
                e.update(status="pending", reason="not_scored", detail=_PENDING, series_key=f.series_key)
            elif o.ok:
                e.update(status="scored", reason="", detail="", series_key=f.series_key)
            elif o.skipped:
                code, _, detail = o.error.partition(": ")
                e.update(status="skipped", reason=code, detail=detail, series_key=f.series_key)
            else:
                e.update(status="failed", reason=series_reason(o), detail=o.error, series_key=f.series_key)
            e["output_dir"] = f"series/{dirs[f.series_key]}"
        out.append(e)
    return out


def series_reason(o: records.SeriesOutcome) -> str:
    """The reason code of a series not scored: the ``code`` of an ``"code: detail"`` error from medad's own checks
    (``label_map``, ``non_finite``, ``no_signal``, ...), else ``series_<stage>`` (``series_load``, ``series_score``,
    ``series_write``, ``series_stow``) for an error raised while loading, scoring or writing."""
    code = o.error.partition(": ")[0]
    return code if re.fullmatch(r"[a-z][a-z_]*", code) else f"series_{o.stage or 'error'}"


def write_manifest(path: str | os.PathLike, entries: Iterable[dict]) -> Path:
    """Write ``manifest.jsonl`` atomically (one JSON object per line, keys sorted)."""
    return write_text_atomic(path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def _shown(key: str, kind: str, d: str, error: str, files, show_paths: bool) -> tuple[str, str]:
    """A failure as people see it (summary, stdout): a DICOM series by its UID, any other by its anonymous output
    folder; the error without file or folder names (unless ``show_paths``)."""
    if show_paths:
        return key, error
    dicom = str(kind).startswith("dicom")
    return (key if dicom else f"series/{d}"), redact(error, [key if not dicom else "", *(files or [])])


def merge(out: Path, plan: Plan, n_todo: int, *, provenance: Optional[dict] = None,
          show_paths: bool = False) -> tuple[ScoreSummary, list[records.SeriesOutcome]]:
    """Write ``results.csv`` and ``manifest.jsonl`` from the index and the records.

    ``provenance`` (the run's) fills the provenance columns; ``show_paths`` keeps paths and file names in
    ``results.csv`` and the summary (the manifest always has them).

    Returns:
        ``(summary, outcomes)``: the :class:`ScoreSummary` (``report`` not set yet) and the records of the selected
        series (for the report), in index order.
    """
    outcomes: dict[str, records.SeriesOutcome] = {}
    rows = []
    series_reasons: dict[str, int] = {}
    rejected_keys = {s.key for s in plan.rejected}
    n_rejected_failed = n_rejected_skipped = n_pending = 0
    rejected_failures: list[tuple[str, str]] = []
    row = functools.partial(results_row, provenance=provenance, show_paths=show_paths)
    for s in sorted((*plan.index.series, *plan.index.rejected), key=_order):
        fields = s.to_dict()  # its files only serve to redact errors
        d = plan.dirs[s.key]
        if s.key in plan.filtered:
            rows.append(row(fields, "filtered", error=plan.filtered[s.key], anonymous_key=d))
            continue
        if s.key in rejected_keys:  # found at indexing but not loadable: its row says why
            damaged = s.reason in DAMAGE_REASONS
            n_rejected_failed += damaged
            n_rejected_skipped += not damaged
            if damaged:
                rejected_failures.append(_shown(s.key, s.kind, d, f"[index] {s.reason}: {s.detail}", s.files,
                                                show_paths))
            series_reasons[s.reason] = series_reasons.get(s.reason, 0) + 1
            rows.append(row(fields, "failed" if damaged else "skipped", error=f"{s.reason}: {s.detail}",
                            anonymous_key=d))
            continue
        rec = records.read_record(out / "series" / d)
        if rec is not None and rec.fingerprint != plan.fingerprints[s.key]:
            rec = None
        if rec is None:
            n_pending += 1
            rows.append(row(fields, "pending", error=_PENDING, anonymous_key=d))
            continue
        outcomes[s.key] = rec
        if not rec.ok:
            code = series_reason(rec)
            series_reasons[code] = series_reasons.get(code, 0) + 1
        rows.append(row(fields, rec.status, scores=rec.scores(), error=rec.error or rec.warning, anonymous_key=d,
                        output_dir=f"series/{d}"))
    results = write_results_csv(out / "results.csv", rows)
    entries = file_entries(plan.index, outcomes, plan.filtered, plan.dirs)
    manifest = write_manifest(out / "manifest.jsonl", entries)
    by_status: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for e in entries:
        by_status[e["status"]] = by_status.get(e["status"], 0) + 1
        if e["status"] != "scored" and e.get("reason"):
            reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    ok = [o for o in outcomes.values() if o.ok]
    failed = [o for o in outcomes.values() if not o.ok and not o.skipped]
    by_key = {s.key: s for s in plan.index.series}
    summary = ScoreSummary(
        out_dir=out, n_files=len(entries), n_series=len(plan.index.series) + len(plan.index.rejected),
        n_selected=len(plan.selected), n_filtered=len(plan.filtered), n_scored=len(ok),
        n_reused=len(plan.selected) - n_todo, n_failed=len(failed) + n_rejected_failed,
        n_skipped=sum(1 for o in outcomes.values() if o.skipped) + n_rejected_skipped,
        n_files_failed=sum(1 for e in entries if e["status"] == "failed" and e.get("reason") in DAMAGE_REASONS),
        n_slices=sum(o.n_slices for o in ok), n_warned=sum(1 for o in ok if o.warning), n_pending=n_pending,
        files_by_status=by_status, skip_reasons=reasons, series_reasons=series_reasons,
        failures=[_shown(o.key, o.series.get("kind", ""), o.dir, f"[{o.stage}] {o.error}", by_key[o.key].files,
                         show_paths) for o in failed] + rejected_failures, results_csv=results,
        manifest=manifest)
    return summary, [outcomes[s.key] for s in plan.selected if s.key in outcomes]


def _order(r) -> tuple:
    """Rows in index order: DICOM before files, then study, series number, key."""
    return (r.kind not in ("dicom", "dicom-multiframe"), r.study_uid,
            r.series_number if r.series_number is not None else 1 << 30, r.key)


def write_summary(summary: ScoreSummary) -> Path:
    """Write ``summary.json`` into the summary's output folder (atomically)."""
    return write_text_atomic(summary.out_dir / "summary.json",
                             json.dumps(summary.to_dict(), indent=1, sort_keys=True) + "\n")
