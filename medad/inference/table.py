"""The results table: one row per scored (or not scored) series, the same columns in every front-end.

``medad score`` writes it as ``results.csv``; the bundle and the Label app build their rows with the same
:func:`results_row`. Identifiers are UIDs and anonymous keys only: no patient names or IDs, no paths (file and folder
names in exports often hold patient names): a non-DICOM series is keyed by its anonymous output-folder name and has
no description (its only "description" would be its file name), and error texts go through :func:`redact`.
``show_paths=True`` (``medad score --show-paths``) opts out for operators who need the paths.

Columns (:data:`RESULTS_COLUMNS`):

* ``volume_score``: with a calibrated detector, the calibrated volume score in [0, 1] (the fraction of normal
  calibration studies that scored lower, see :class:`medad.model.options.Calibration`); uncalibrated, the raw
  detector score (no fixed range). ``volume_score_raw``: the raw score.
* ``flagged``: ``true``/``false``: the study is above the operating point (empty: uncalibrated or not scored).
* ``top_slices``/``top_slice_scores``: most anomalous slices (source slice index) and their (calibrated) scores.
* ``status``: ``ok``, ``failed``, ``skipped``, ``filtered``, ``pending``; ``error``: why, for the others.
* ``operating_point``, ``medad_version``, ``backbone_sha256``, ``adapters_sha256``: the provenance of the scores.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

__all__ = ["RESULTS_COLUMNS", "redact", "results_row", "series_fields", "write_results_csv"]

#: Columns of the results table.
RESULTS_COLUMNS = ("series_key", "study_uid", "series_uid", "series_number", "modality", "body_part",
                   "series_description", "n_files", "slices", "volume_score", "flagged", "top_slices",
                   "top_slice_scores", "status", "error", "output_dir", "volume_score_raw", "operating_point",
                   "medad_version", "backbone_sha256", "adapters_sha256")

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_SEG = r"[^\s'\"(),;:<>/\\]"  # a character of a path component
_PATHLIKE = re.compile(rf"(?<![<\w])(?:(?:[A-Za-z]:[/\\]|~?/)?(?:{_SEG}+[/\\])+{_SEG}*|(?:[A-Za-z]:[/\\]|~?/){_SEG}+)")


def redact(text: str, paths: Iterable[str] = ()) -> str:
    """``text`` without file or folder names: each of ``paths`` (and its file name, and the names of its folders
    below ``/``) becomes ``<file>``/``<folder>``, then any remaining token that looks like a path (holds ``/`` or
    ``\\``, URLs excepted) becomes ``<path>``."""
    out = str(text)
    names: dict[str, str] = {}
    for p in paths:
        p = str(p)
        if not p:
            continue
        names[p] = "<file>"
        parts = [q for q in re.split(r"[/\\]", p) if q]
        if parts:
            names.setdefault(parts[-1], "<file>")
        for q in parts[:-1]:
            names.setdefault(q, "<folder>")
    for name in sorted(names, key=len, reverse=True):  # longest first: a full path before its parts
        if len(name) >= 3:
            out = re.sub(r"(?<![\w.-])" + re.escape(name) + r"(?![\w-])", names[name], out)
    urls: list[str] = []

    def keep(m: re.Match) -> str:
        urls.append(m.group(0))
        return f"\x00{len(urls) - 1}\x00"

    out = _URL.sub(keep, out)
    out = _PATHLIKE.sub("<path>", out)
    return re.sub("\x00(\\d+)\x00", lambda m: urls[int(m.group(1))], out)


def series_fields(volume: Any) -> dict[str, Any]:
    """The identifying fields of a loaded volume (its ``meta``), as :meth:`medad.io.SeriesRecord.to_dict` gives
    them for an indexed series (``key``, ``kind``, UIDs, modality, body part, description, ``n_files``, ``shape``)."""
    m = volume.meta
    files = list(m.get("source_files") or [])
    number = m.get("series_number")
    return {"key": str(m.get("series_key") or m.get("series_uid") or ""), "kind": "dicom" if files else "volume",
            "study_uid": str(m.get("study_uid", "")), "series_uid": str(m.get("series_uid", "")),
            "series_number": int(number) if number not in (None, "") else None,
            "modality": str(m.get("modality", "")), "body_part": str(m.get("body_part", "")),
            "series_description": str(m.get("series_description", "")), "n_files": len(files) or 1,
            "shape": [int(s) for s in volume.shape[1:]]}


def _fmt_score(v: Optional[float]) -> str:
    return "" if v is None else f"{v:.6f}"


def results_row(series: Mapping[str, Any], status: str, *, scores: Optional[Mapping[str, Any]] = None,
                error: str = "", anonymous_key: str = "", output_dir: str = "",
                provenance: Optional[Mapping[str, Any]] = None, show_paths: bool = False) -> dict[str, Any]:
    """One row of the results table.

    Args:
        series: the series' identifying fields (:meth:`medad.io.SeriesRecord.to_dict` or :func:`series_fields`).
        status: ``ok``, ``failed``, ``skipped``, ``filtered``, ``pending``.
        scores: :func:`medad.inference.outputs.result_scores` (``n_slices``, ``volume_score``, ``top_slices``,
            ``top_slice_scores``) of a series scored ``ok``; None otherwise.
        error: one-line reason for a status other than ``ok``.
        anonymous_key: the ``series_key`` of a non-DICOM series, whose own key is a path that may name the patient
            (``/exports/DOE_JOHN/t1.nii.gz``); DICOM series are keyed by their SeriesInstanceUID (``#n`` when split).
        output_dir: where the series' outputs are, relative to the table.
        provenance: the run's :func:`medad.inference.provenance.provenance` (operating point, version, digests).
        show_paths: keep a non-DICOM series' path as its key and its file name as description, and errors as they
            are (opt-in; by default errors are :func:`redact`-ed with the series' files).
    """
    s = scores if status == "ok" else None
    dicom = str(series.get("kind", "")).startswith("dicom")
    prov = provenance or {}
    op = prov.get("operating_point") or None
    flagged = s.get("flagged") if s else None
    raw = s.get("raw_volume_score", s.get("volume_score")) if s else None
    if not show_paths:
        error = redact(error, [series.get("key", "") if not dicom else "", *(series.get("files") or [])])
    return {
        "series_key": series.get("key", "") if (dicom or show_paths) else anonymous_key,
        "study_uid": series.get("study_uid", ""),
        "series_uid": series.get("series_uid", ""),
        "series_number": "" if series.get("series_number") is None else series["series_number"],
        "modality": series.get("modality", ""),
        "body_part": series.get("body_part", ""),
        "series_description": series.get("series_description", "") if (dicom or show_paths) else "",
        "n_files": series.get("n_files", ""),
        "slices": s["n_slices"] if s else (series.get("shape") or [None, None, ""])[-1],
        "volume_score": _fmt_score(s["volume_score"]) if s else "",
        "flagged": "" if flagged is None else ("true" if flagged else "false"),
        "top_slices": " ".join(map(str, s["top_slices"])) if s else "",
        "top_slice_scores": " ".join(f"{v:.4f}" for v in s["top_slice_scores"]) if s else "",
        "status": status,
        "error": str(error).replace("\n", " "),
        "output_dir": output_dir,
        "volume_score_raw": _fmt_score(raw) if s else "",
        "operating_point": f"{op['operating_point']:.6f}" if op else "",
        "medad_version": prov.get("medad", ""),
        "backbone_sha256": prov.get("backbone_sha256", ""),
        "adapters_sha256": prov.get("adapters_sha256", ""),
    }


def write_results_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the rows as CSV with :data:`RESULTS_COLUMNS` (atomically)."""
    from ..io._atomic import write_text_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULTS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return write_text_atomic(path, buf.getvalue())
