"""``report.html``: the scored series of a ``medad score`` run, most anomalous first, with top-slice thumbnails.

One self-contained static page (no JavaScript framework, no network): a table sorted by volume score with the
series' UIDs (no patient names or IDs; a non-DICOM series by its anonymous output folder, without its file name),
modality, description, slice count, the flag (above the operating point), top slices and links to the overlay PNGs
and the NIfTI map; failed series are listed below with their reason (file and folder names redacted). Images are
linked by relative path, so the page works when the output folder is copied or served as is. ``show_paths`` opts
in to paths and file names.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from ..inference.table import redact
from ..io._atomic import write_text_atomic

__all__ = ["write_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top;font-size:13px}th{background:#f3f3f3;position:sticky;top:0}
td.score{font-weight:600;font-variant-numeric:tabular-nums}td.thumbs{white-space:nowrap}
img{height:72px;margin-right:4px;image-rendering:pixelated}svg.spark{display:block;margin-top:4px}
.uid{font-family:monospace;font-size:11px;color:#555}.bar{background:#e74c3c;height:6px}
.note{color:#a00;font-weight:600}.flag{color:#fff;background:#dc1414;padding:1px 5px;border-radius:3px}
"""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _sparkline(scores: Sequence[float], top: Sequence[int], width: int = 120, height: int = 28) -> str:
    """Inline SVG of the per-slice scores (slice index left to right), top slices marked."""
    if not scores:
        return ""
    lo, hi = min(scores), max(scores)
    span = (hi - lo) or 1.0
    n = len(scores)

    def xy(i: int, v: float) -> tuple[float, float]:
        return (width * (i + 0.5) / n, height - 2 - (height - 4) * (v - lo) / span)

    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in enumerate(scores)))
    dots = "".join(f'<circle cx="{xy(k, scores[k])[0]:.1f}" cy="{xy(k, scores[k])[1]:.1f}" r="2" fill="#e74c3c"/>'
                   for k in top if 0 <= k < n)
    return (f'<svg class=spark width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<title>slice scores {lo:.3f}..{hi:.3f}</title><polyline points="{pts}" fill="none" stroke="#555" '
            f'stroke-width="1"/>{dots}</svg>')


def _dicom(o) -> bool:
    return str(o.series.get("kind", "")).startswith("dicom")


def _operating_point(provenance) -> str:
    op = (provenance or {}).get("operating_point") or None
    if not op:
        return ("Scores are uncalibrated raw detector scores (no operating point: nothing is flagged). "
                "Fit one on normal studies with <code>medad calibrate</code>.")
    return (f"Scores are calibrated (0-1: the fraction of {op['n_studies']} normal calibration studies that scored "
            f"lower). <span class=flag>flagged</span> = above the operating point {op['operating_point']:.4f} "
            f"(target specificity {op['specificity']:g}; over normal studies like the calibration ones at most "
            f"{100 * op['fpr_bound']:.1f} % are flagged).")


def write_report(path: str | os.PathLike, outcomes: Sequence, *, n_files: int = 0, filtered: int = 0,
                 title: str = "medad anomaly scores", provenance=None, show_paths: bool = False) -> Path:
    """Write ``report.html`` atomically.

    Args:
        path: output file (its folder is the output folder: the records' paths are relative to it).
        outcomes: :class:`medad.batch.records.SeriesOutcome` records (ok and failed).
        n_files, filtered: counts shown in the header.
        provenance: the run's provenance (its operating point is explained in the header).
        show_paths: show non-DICOM series by path and file name, errors unredacted (opt-in).
    """
    ok = sorted((o for o in outcomes if o.ok), key=lambda o: (-(o.volume_score or 0.0), o.key))
    failed = sorted((o for o in outcomes if o.status == "failed"), key=lambda o: o.key)
    n_skipped = sum(1 for o in outcomes if o.status == "skipped")
    rows = []
    for rank, o in enumerate(ok, start=1):
        s = o.series
        thumbs = "".join(
            f'<a href="{_e(p)}"><img loading=lazy src="{_e(p)}" alt="slice {k}" title="slice {k} score {sc:.3f}"></a>'
            for p, k, sc in zip(o.outputs.get("pngs", []), o.top_slices, o.top_slice_scores))
        nifti = o.outputs.get("nifti")
        links = f'<a href="{_e(nifti)}">map</a>' if nifti else ""
        for name in ("pm", "seg"):
            if o.outputs.get(name):
                links += f' <a href="{_e(o.outputs[name])}">{name.upper()}</a>'
        width = max(2, min(100, int(100 * (o.volume_score or 0.0))))  # calibrated scores are in [0, 1]
        ident = (f"study {_e(s.get('study_uid'))}<br>series {_e(o.key)}" if _dicom(o)
                 else f"file {_e(o.key)}" if show_paths else f"file series/{_e(o.dir)} (path in manifest.jsonl)")
        desc = s.get("series_description") if (_dicom(o) or show_paths) else ""
        flagged = getattr(o, "flagged", None)
        flag = "<span class=flag>flagged</span>" if flagged else ("no" if flagged is False else "")
        rows.append(
            f"<tr><td>{rank}</td><td class=score>{(o.volume_score or 0.0):.4f}<div class=bar style='width:{width}%'>"
            f"</div></td><td>{flag}</td><td>{_e(s.get('modality'))}</td><td>{_e(s.get('body_part'))}</td>"
            f"<td>{_e(s.get('series_number'))} {_e(desc)}<div class=uid>{ident}</div></td>"
            f"<td>{o.n_slices}</td><td>{_e(' '.join(map(str, o.top_slices)))}"
            f"{_sparkline(o.slice_scores, o.top_slices)}</td><td class=thumbs>{thumbs}</td><td>{links}</td></tr>")
    def fail_row(o) -> str:
        shown = _dicom(o) or show_paths
        key = o.key if shown else f"series/{o.dir}"
        desc = o.series.get("series_description") if shown else ""
        err = o.error if show_paths else redact(o.error, [o.key, *(o.series.get("files") or [])])
        return (f"<tr><td class=uid>{_e(key)}</td><td>{_e(o.series.get('modality'))}</td><td>{_e(desc)}</td>"
                f"<td>{_e(o.stage)}</td><td>{_e(err)}</td></tr>")

    fails = "".join(fail_row(o) for o in failed)
    body = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class=note>Research use only: not for diagnosis.</p>"
        f"<p>{_operating_point(provenance)}</p>"
        f"<p>{len(ok)} series scored, {len(failed)} failed, {n_skipped} skipped (label maps), {filtered} filtered "
        f"out; {n_files} input files "
        "(see manifest.jsonl for every file, results.csv for every series).</p>"
        "<table><thead><tr><th>#</th><th>score</th><th>flag</th><th>modality</th><th>body part</th><th>series</th>"
        "<th>slices</th>"
        "<th>top slices, slice scores</th><th>top-slice overlays (plain | map)</th><th>files</th></tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
        + (("<h2>Failed series</h2><table><thead><tr><th>series</th><th>modality</th><th>description</th>"
            "<th>stage</th><th>reason</th></tr></thead><tbody>" + fails + "</tbody></table>") if failed else "")
        + "</body></html>\n")
    return write_text_atomic(path, body)
