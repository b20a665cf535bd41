"""Headers -> volumes: group DICOM slices into series, check each candidate volume, and give every file its status.

:func:`group` turns the :class:`~medad.io.dicom_index.headers.Header` of every file into loadable
:class:`~medad.io.dicom_index.SeriesRecord` s, *rejected* ones (a candidate volume that cannot be loaded, with its
reason: every series found gets a row in ``results.csv``) and one :class:`~medad.io.dicom_index.FileRecord` per file.

Rules:

- Single-frame slices are grouped by (study, series, frame of reference, size), then by orientation and pixel spacing
  *within a tolerance* (:data:`~medad.io.dicom_index.headers.ORIENTATION_TOL`, the tolerance loading uses), so
  rounding noise in ImageOrientationPatient never splits one series into interleaved half-volumes.
- Several files with one SOPInstanceUID: identical content (bytes, or pixels + position) keeps the first copy and
  skips the others as ``duplicate_instance``; different content rejects the whole candidate volume as
  ``conflicting_duplicates`` (which copy is right is unknown).
- Files skipped for a reason of their own (non-image objects, localizers, projections, ...) whose series has no
  candidate volume are gathered per (series, reason) into one rejected record each, so the series has its row;
  UID-less images (``missing_uid``) per folder (keyed ``nouid-<hash of the folder>``: no path in the key).
"""

from __future__ import annotations

import filecmp
import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from .headers import ORIENTATION_TOL, SPLIT_TAGS, Header
from .volumes import too_large

__all__ = ["group"]

_SPACING_RTOL = 0.01   # relative slice-spacing tolerance (same default as highdicom)
_TILT_TOL = 1e-3       # 1 - |cos| between stacking direction and slice normal


def _same_content(a: str, b: str) -> bool:
    """Byte-identical files, or the same pixels at the same position (only the header differs)."""
    try:
        if filecmp.cmp(a, b, shallow=False):
            return True
        from .._header import dcmread_any

        da, db = dcmread_any(a), dcmread_any(b)
        same = [da.get(k) == db.get(k) for k in ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient",
                                                  "RescaleSlope", "RescaleIntercept", "NumberOfFrames")]
        return all(same) and np.array_equal(da.pixel_array, db.pixel_array)  # any encoding, same pixels
    except Exception:  # noqa: BLE001 - unreadable copies are not "the same"
        return False


def _duplicates(headers: Sequence[Header], status: dict) -> set[str]:
    """Resolve repeated SOPInstanceUIDs; returns the UIDs whose copies differ (conflicts)."""
    from .records import FileRecord

    by_sop: dict[str, list[Header]] = defaultdict(list)
    for h in headers:
        if h.sop:
            by_sop[h.sop].append(h)
    conflicts = set()
    for sop, copies in by_sop.items():
        if len(copies) < 2:
            continue
        first = copies[0]
        if all(_same_content(first.path, c.path) for c in copies[1:]):
            for c in copies[1:]:
                status[c.path] = FileRecord(c.path, "skipped", "duplicate_instance",
                                            f"an identical copy of {first.path} (same SOPInstanceUID and content)")
        else:
            conflicts.add(sop)
    return conflicts


def _cluster(values: Sequence[tuple], tol) -> list[int]:
    """Greedy clustering in order: each value joins the first representative within ``tol(rep, value)``."""
    reps: list[tuple] = []
    out = []
    for v in values:
        j = next((i for i, r in enumerate(reps) if tol(r, v)), None)
        if j is None:
            reps.append(v)
            j = len(reps) - 1
        out.append(j)
    return out


def _split_duplicates(entries: list[dict]) -> tuple[list[tuple[str, list[dict]]], bool]:
    """Split a group that has several slices at one position by the first tag that separates them."""
    def dup(es):
        pos = np.round([e["z"] for e in es], 2)
        return len(np.unique(pos)) != len(pos)

    if not dup(entries):
        return [("", entries)], True
    for i, kw in enumerate(SPLIT_TAGS):
        groups: dict[str, list[dict]] = defaultdict(list)
        for e in entries:
            groups[e["h"].split[i]].append(e)
        if len(groups) > 1 and not any(dup(g) for g in groups.values()):
            return [(f"{kw}={k}", groups[k]) for k in sorted(groups)], True
    return [("", entries)], False


def _check_spacing(entries: list[dict]) -> tuple[str, str] | None:
    if len(entries) < 2:
        return None
    z = np.array([e["z"] for e in entries])
    d = np.diff(z)
    med = float(np.median(d))
    if med <= 1e-6:
        return "duplicate_positions", "several slices share one position"
    if np.abs(d - med).max() > _SPACING_RTOL * med:
        gaps = [f"{z[i]:.2f}->{z[i + 1]:.2f} mm" for i in np.nonzero(np.abs(d - med) > _SPACING_RTOL * med)[0][:5]]
        return "irregular_spacing", (f"slice spacing varies from {d.min():.3g} to {d.max():.3g} mm (expected {med:.3g} "
                                     f"mm everywhere; missing slices?) at {', '.join(gaps)}")
    first, last = entries[0]["h"].ipp, entries[-1]["h"].ipp
    stack = (np.asarray(last) - np.asarray(first)) / np.linalg.norm(np.asarray(last) - np.asarray(first))
    cos = abs(float(stack @ entries[0]["normal"]))
    if 1.0 - cos > _TILT_TOL:
        angle = np.degrees(np.arccos(min(1.0, cos)))
        return "gantry_tilt", f"slices are stacked {angle:.1f} deg off the slice normal (gantry tilt); resample first"
    return None


def _record(key: str, kind: str, h: Header, files: Sequence[str], **kw):
    from .records import SeriesRecord

    return SeriesRecord(key=key, kind=kind, study_uid=h.study, series_uid=h.series, modality=h.modality,
                        body_part=h.body_part, series_description=h.description, n_files=len(files),
                        files=tuple(files), series_number=h.series_number, sop_class_uid=h.sop_class,
                        frame_of_reference_uid=h.frame_of_reference, **kw)


def _single_frames(headers: list[Header], conflicts: set[str]) -> dict[str, list[tuple]]:
    """Series UID -> candidate volumes ``(label, entries sorted along the normal, reject reason or None)``."""
    buckets: dict[tuple, list[Header]] = defaultdict(list)
    for h in headers:
        buckets[(h.study, h.series, h.frame_of_reference, (h.rows, h.cols))].append(h)
    groups: dict[tuple, list[dict]] = {}
    for bkey, hs in buckets.items():
        orient = _cluster([h.iop for h in hs], lambda r, v: max(abs(a - b) for a, b in zip(r, v)) <= ORIENTATION_TOL)
        spac = _cluster([h.spacing for h in hs], lambda r, v: max(abs(a - b) for a, b in zip(r, v))
                        <= 1e-4 * max(max(r), 1e-6))
        reps_o = {j: hs[i].iop for i, j in reversed(list(enumerate(orient)))}
        reps_s = {j: hs[i].spacing for i, j in reversed(list(enumerate(spac)))}
        normals = {j: np.cross(np.asarray(iop[:3]), np.asarray(iop[3:])) for j, iop in reps_o.items()}
        keys = {(o, p): (*bkey[:3], tuple(round(v, 4) for v in reps_o[o]), bkey[3],
                         tuple(round(v, 4) for v in reps_s[p])) for o, p in set(zip(orient, spac))}
        for h, o, p in zip(hs, orient, spac):
            n = normals[o]
            groups.setdefault(keys[(o, p)], []).append(
                {"h": h, "normal": n, "z": float(h.ipp[0] * n[0] + h.ipp[1] * n[1] + h.ipp[2] * n[2])})
    out: dict[str, list[tuple]] = defaultdict(list)
    for gkey in sorted(groups):
        entries = groups[gkey]
        siblings = [k for k in groups if k[1] == gkey[1]]
        differs = [i for i in (0, 2, 3, 4, 5) if len({k[i] for k in siblings}) > 1]
        names = {0: f"study {gkey[0]}", 2: f"frame of reference {gkey[2]}", 3: f"orientation {gkey[3]}",
                 4: f"size {gkey[4][1]}x{gkey[4][0]}", 5: f"pixel spacing {gkey[5]}"}
        base = [names[i] for i in differs]
        if any(e["h"].sop in conflicts for e in entries):
            n = sum(e["h"].sop in conflicts for e in entries)
            out[gkey[1]].append((", ".join(base), sorted(entries, key=lambda e: (e["z"], e["h"].path)), (
                "conflicting_duplicates", f"{n} files share a SOPInstanceUID with another file but differ in content "
                                          "(pixels or position): which copy is right is unknown; remove the wrong "
                                          "copies and rerun")))
            continue
        split, ok = _split_duplicates(entries)
        if not ok:
            out[gkey[1]].append((", ".join(base), sorted(entries, key=lambda e: (e["z"], e["h"].path)), (
                "duplicate_positions", "several slices at one position and no AcquisitionNumber, EchoNumbers, "
                                       "TemporalPositionIdentifier, TriggerTime, DiffusionBValue or ImageType separates "
                                       "them (4D or merged series)")))
            continue
        for label, es in split:
            es = sorted(es, key=lambda e: e["z"])
            h0 = es[0]["h"]
            bad = _check_spacing(es) or too_large((h0.cols, h0.rows, len(es)))
            out[gkey[1]].append((", ".join(base + ([label] if label else [])), es, bad))
    return out


def group(headers: list[Header], include_image_files: bool = True) -> tuple[list, list, dict]:
    """``(loadable records, rejected records, {path: FileRecord})`` for the headers of every readable file."""
    from .records import FileRecord

    status: dict[str, FileRecord] = {}
    loadable, rejected = [], []
    dicom_ok = [h for h in headers if h.kind == "dicom" and not h.reason]
    conflicts = _duplicates(dicom_ok, status)
    usable = [h for h in dicom_ok if h.path not in status]

    by_series = _single_frames([h for h in usable if not h.multiframe], conflicts)
    for uid, volumes in by_series.items():
        for i, (label, es, bad) in enumerate(volumes):
            key = uid if len(volumes) == 1 else f"{uid}#{i + 1}"
            files = [e["h"].path for e in es]
            h0 = es[0]["h"]
            spacing = float(np.median(np.diff([e["z"] for e in es]))) if len(es) > 1 and not bad else None
            rec = _record(key, "dicom", h0, files, shape=(h0.cols, h0.rows, len(es)), slice_spacing=spacing,
                          split_by=label, reason=bad[0] if bad else "", detail=bad[1] if bad else "")
            (rejected if bad else loadable).append(rec)
            for f in files:
                status[f] = FileRecord(f, "skipped", bad[0], bad[1], key) if bad else FileRecord(f, "series",
                                                                                               series_key=key)

    multi = [h for h in usable if h.multiframe]
    count: dict[str, int] = defaultdict(int)
    for h in multi:
        count[h.series] += 1
    seen: dict[str, int] = defaultdict(int)
    for h in multi:
        seen[h.series] += 1
        key = h.series if count[h.series] == 1 and h.series not in by_series else f"{h.series}#mf{seen[h.series]}"
        bad = ("conflicting_duplicates", "another file has this SOPInstanceUID with other content") \
            if h.sop in conflicts else too_large((h.cols, h.rows, h.frames))
        rec = _record(key, "dicom-multiframe", h, [h.path], shape=(h.cols, h.rows, h.frames),
                      reason=bad[0] if bad else "", detail=bad[1] if bad else "")
        (rejected if bad else loadable).append(rec)
        status[h.path] = FileRecord(h.path, "skipped", bad[0], bad[1], key) if bad else FileRecord(
            h.path, "series", series_key=key)

    # files skipped for a reason of their own: one rejected record per (series, reason) of a series without a record
    have = {r.series_uid for r in loadable + rejected}
    orphans: dict[tuple[str, str], list[Header]] = defaultdict(list)
    for h in headers:
        if h.kind != "dicom" or h.path in status:
            continue
        if h.reason and h.series and h.series not in have:
            orphans[(h.series, h.reason)].append(h)
        elif h.reason == "missing_uid":  # one row per folder of UID-less images
            folder = os.path.dirname(h.path)
            orphans[("nouid-" + hashlib.sha1(folder.encode("utf-8", "surrogateescape")).hexdigest()[:16],
                     h.reason)].append(h)
        else:
            status[h.path] = FileRecord(h.path, "skipped", h.reason, h.detail)
    reasons_per_uid: dict[str, int] = defaultdict(int)
    for uid, _ in orphans:
        reasons_per_uid[uid] += 1
    for (uid, reason), hs in sorted(orphans.items()):
        key = uid if reasons_per_uid[uid] == 1 else f"{uid}#{reason}"
        detail = hs[0].detail + (f" ({len(hs)} files)" if len(hs) > 1 else "")
        rejected.append(_record(key, "dicom", hs[0], [h.path for h in hs], reason=reason, detail=detail))
        for h in hs:
            status[h.path] = FileRecord(h.path, "skipped", reason, h.detail, key)

    for h in headers:  # NIfTI / NRRD / MHA: one record per file
        if h.kind == "dicom":
            continue
        from .records import SeriesRecord

        rec = SeriesRecord(key=h.path, kind=h.kind, study_uid="", series_uid="", modality="", body_part="",
                           series_description=h.path.rsplit("/", 1)[-1], n_files=1 + len(h.data_files),
                           files=(h.path,) + h.data_files, shape=h.shape, reason=h.reason, detail=h.detail)
        (rejected if h.reason else loadable).append(rec)
        for f in rec.files:
            status[f] = FileRecord(f, "skipped", h.reason, h.detail, h.path) if h.reason else FileRecord(
                f, "series", series_key=h.path)

    order = lambda r: (r.kind not in ("dicom", "dicom-multiframe"), r.study_uid,  # noqa: E731
                       r.series_number if r.series_number is not None else 1 << 30, r.key)
    return sorted(loadable, key=order), sorted(rejected, key=order), status
