"""The results table: one row per scored (or not scored) series, the same columns in every front-end.

``medad score`` writes it as ``results.csv``; the bundle and the Label app build their rows with the same
:func:`results_row`. Identifiers are UIDs and anonymous keys only: no patient names or IDs, no paths.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

__all__ = ["RESULTS_COLUMNS", "results_row", "series_fields", "write_results_csv"]

#: Columns of the results table.
RESULTS_COLUMNS = ("series_key", "study_uid", "series_uid", "series_number", "modality", "body_part",
                   "series_description", "n_files", "slices", "volume_score", "top_slices", "top_slice_scores",
                   "status", "error", "output_dir")


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
                error: str = "", anonymous_key: str = "", output_dir: str = "") -> dict[str, Any]:
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
    """
    s = scores if status == "ok" else None
    dicom = str(series.get("kind", "")).startswith("dicom")
    return {
        "series_key": series.get("key", "") if dicom else anonymous_key,
        "study_uid": series.get("study_uid", ""),
        "series_uid": series.get("series_uid", ""),
        "series_number": "" if series.get("series_number") is None else series["series_number"],
        "modality": series.get("modality", ""),
        "body_part": series.get("body_part", ""),
        "series_description": series.get("series_description", ""),
        "n_files": series.get("n_files", ""),
        "slices": s["n_slices"] if s else (series.get("shape") or [None, None, ""])[-1],
        "volume_score": _fmt_score(s["volume_score"]) if s else "",
        "top_slices": " ".join(map(str, s["top_slices"])) if s else "",
        "top_slice_scores": " ".join(f"{v:.4f}" for v in s["top_slice_scores"]) if s else "",
        "status": status,
        "error": str(error).replace("\n", " "),
        "output_dir": output_dir,
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
