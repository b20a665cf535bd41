"""Find image volumes in any folder tree: a header-only DICOM index grouped into series, plus NIfTI/NRRD/MHA files.

Every input file ends up in exactly one :class:`FileRecord`: ``status="series"`` (part of a loadable volume, with its
``series_key``) or ``status="skipped"`` with a stable ``reason`` code and a human ``detail``. Reason codes:

==========================  ====================================================================================
``not_dicom``               not DICOM (neither Part-10 nor a bare data set) and not a NIfTI/NRRD/MHA image
``dicomdir``                a DICOMDIR index file
``non_image``               a non-image SOP class (SR, PR, SEG, KO, RTSTRUCT, Parametric Map, PDF, ...)
``localizer``               a localizer/scout/survey image (ImageType LOCALIZER or such a SeriesDescription)
``no_pixel_data``           an image SOP class without Pixel Data
``truncated``               the file is cut short: inside its file meta, header or Pixel Data (damaged data)
``no_geometry``             no ImagePositionPatient/ImageOrientationPatient/PixelSpacing (e.g. a 2D projection)
``unsupported``             a multi-frame object without functional-group geometry, colour data, ...
``duplicate_instance``      a second copy of a SOPInstanceUID already indexed
``duplicate_positions``     several slices at one position that no tag (acquisition, echo, phase, b-value)
                            separates (4D data or merged series)
``irregular_spacing``       missing slices / uneven slice spacing (a gappy series)
``gantry_tilt``             slices not stacked perpendicular to the image plane
``unreadable``              any other read error (the exception is in ``detail``; damaged data)
==========================  ====================================================================================

Single-frame files are grouped by (StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID, orientation, size,
pixel spacing), and a group is split further by AcquisitionNumber, EchoNumbers, TemporalPositionIdentifier,
TriggerTime, DiffusionBValue or ImageType only when it holds several slices at one position. Slices are sorted by
position along the slice normal (InstanceNumber is ignored); spacing must be regular within 1 %. Enhanced and
legacy-converted multi-frame objects are one record per file (their geometry is checked when loading).

Example::

    index = find_series(["/data/pacs_export"])
    for rec in index.series:                      # loadable volumes
        vol = load_series(rec)                    # MetaTensor [1, X, Y, Z]
    for f in index.skipped:                       # everything else, with a reason
        print(f.path, f.reason, f.detail)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ._header import is_localizer, read_header

__all__ = ["FileRecord", "SeriesIndex", "SeriesRecord", "IMAGE_FILE_SUFFIXES", "find_series", "is_image_file",
           "split_image_suffix"]

#: The one list of volume file name endings medad reads (besides DICOM, which is recognised by content), with the
#: reader kind: NIfTI with nibabel, the others with SimpleITK. Longest endings first.
IMAGE_FILE_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "itk", ".nhdr": "itk", ".mha": "itk",
                       ".mhd": "itk"}
_SPACING_RTOL = 0.01   # relative slice-spacing tolerance (same default as highdicom)
_TILT_TOL = 1e-3       # 1 - |cos| between stacking direction and slice normal


@dataclass(frozen=True)
class FileRecord:
    """What happened to one input file. ``reason``/``detail`` are empty for files that are part of a series."""

    path: str
    status: str                       # "series" | "skipped"
    reason: str = ""                  # stable code, see the module docstring
    detail: str = ""                  # human explanation (no patient identifiers)
    series_key: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    """One loadable volume.

    ``files`` are sorted by slice position along the slice normal (single-frame DICOM), or hold the one multi-frame /
    NIfTI / NRRD file. ``key`` is unique within a :class:`SeriesIndex`: the SeriesInstanceUID, suffixed ``#n`` when
    one series holds several volumes (acquisitions, orientations, sizes, echoes), or the file path for non-DICOM.
    """

    key: str
    kind: str                         # "dicom" | "dicom-multiframe" | "nifti" | "itk"
    study_uid: str
    series_uid: str
    modality: str
    body_part: str
    series_description: str
    n_files: int
    files: tuple[str, ...]
    series_number: int | None = None
    sop_class_uid: str = ""
    frame_of_reference_uid: str = ""
    shape: tuple[int, ...] = ()       # (X=columns, Y=rows, Z=slices) for DICOM, () when unknown
    slice_spacing: float | None = None
    split_by: str = ""                # e.g. "AcquisitionNumber=2", "orientation 2/2", "" if the whole series

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["files"] = list(self.files)
        d["shape"] = list(self.shape)
        return d


@dataclass
class SeriesIndex:
    """Result of :func:`find_series`: loadable ``series`` and one record per input ``files`` entry."""

    series: list[SeriesRecord] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    def __iter__(self):
        return iter(self.series)

    def __getitem__(self, key: str | int) -> SeriesRecord:
        if isinstance(key, int):
            return self.series[key]
        for s in self.series:
            if s.key == key or s.series_uid == key:
                return s
        raise KeyError(f"no series with key or SeriesInstanceUID {key!r}; known: {[s.key for s in self.series]}")

    @property
    def skipped(self) -> list[FileRecord]:
        return [f for f in self.files if f.status == "skipped"]

    def reasons(self) -> dict[str, int]:
        """Count of skipped files per reason code."""
        out: dict[str, int] = defaultdict(int)
        for f in self.skipped:
            out[f.reason] += 1
        return dict(out)


def split_image_suffix(path: str | os.PathLike) -> tuple[str, str]:
    """``(path without its volume suffix, suffix)`` for a NIfTI/NRRD/MHA file name (case kept), else ``(path, "")``."""
    name = str(path)
    for suf in IMAGE_FILE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)], name[-len(suf):]
    return name, ""


def is_image_file(path: str | os.PathLike) -> str | None:
    """``"nifti"``/``"itk"`` for NIfTI/NRRD/MHA file names, else ``None``."""
    suffix = split_image_suffix(path)[1].lower()
    return IMAGE_FILE_SUFFIXES[suffix] if suffix else None


def _iter_files(inputs: Iterable[str | os.PathLike], recursive: bool) -> list[str]:
    seen: dict[str, None] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            walker = os.walk(p) if recursive else [(str(p), [], [e.name for e in os.scandir(p) if e.is_file()])]
            for root, dirs, names in walker:
                dirs.sort()
                for n in sorted(names):
                    seen.setdefault(os.path.abspath(os.path.join(root, n)), None)
        elif p.is_file():
            seen.setdefault(os.path.abspath(p), None)
        else:
            raise FileNotFoundError(f"input {str(p)!r} is neither a file nor a folder")
    return list(seen)


def _s(ds, kw: str, default: str = "") -> str:
    v = ds.get(kw, default)
    return default if v is None else str(v)


def _split_duplicates(entries: list[dict]) -> tuple[list[tuple[str, list[dict]]], bool]:
    """Split a group that has several slices at one position by the first tag that separates them."""
    def dup(es):
        pos = np.round([e["z"] for e in es], 2)
        return len(np.unique(pos)) != len(pos)

    if not dup(entries):
        return [("", entries)], True
    for kw in ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier", "TriggerTime", "DiffusionBValue",
               "ImageType"):
        groups: dict[str, list[dict]] = defaultdict(list)
        for e in entries:
            groups[e[kw]].append(e)
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
    first, last = np.asarray(entries[0]["ipp"]), np.asarray(entries[-1]["ipp"])
    stack = (last - first) / np.linalg.norm(last - first)
    if 1.0 - abs(float(stack @ entries[0]["normal"])) > _TILT_TOL:
        angle = np.degrees(np.arccos(min(1.0, abs(float(stack @ entries[0]["normal"])))))
        return "gantry_tilt", f"slices are stacked {angle:.1f} deg off the slice normal (gantry tilt); resample first"
    return None


def _entry(path: str, ds) -> dict | tuple[str, str]:
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        spacing = [float(v) for v in ds.PixelSpacing]
    except (AttributeError, TypeError, ValueError):
        return "no_geometry", ("no ImagePositionPatient/ImageOrientationPatient/PixelSpacing: not part of a volume "
                               "(2D projection or secondary capture)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return "unsupported", f"colour image ({ds.get('PhotometricInterpretation', '?')}), only grayscale volumes"
    normal = np.cross(iop[:3], iop[3:])
    return {
        "path": path, "ipp": ipp, "normal": normal, "z": float(ipp @ normal),
        "study": _s(ds, "StudyInstanceUID"), "series": _s(ds, "SeriesInstanceUID"),
        "for": _s(ds, "FrameOfReferenceUID"), "sop": _s(ds, "SOPInstanceUID"),
        "orientation": tuple(np.round(iop, 4)), "size": (int(ds.Rows), int(ds.Columns)),
        "spacing": tuple(np.round(spacing, 4)),
        "AcquisitionNumber": _s(ds, "AcquisitionNumber"), "EchoNumbers": _s(ds, "EchoNumbers"),
        "TemporalPositionIdentifier": _s(ds, "TemporalPositionIdentifier"), "TriggerTime": _s(ds, "TriggerTime"),
        "DiffusionBValue": _s(ds, "DiffusionBValue"),
        "ImageType": "\\".join(map(str, ds.get("ImageType") or [])), "ds": ds,
    }


def _record(key: str, kind: str, ds, files: Sequence[str], **kw) -> SeriesRecord:
    sn = ds.get("SeriesNumber")
    return SeriesRecord(
        key=key, kind=kind, study_uid=_s(ds, "StudyInstanceUID"), series_uid=_s(ds, "SeriesInstanceUID"),
        modality=_s(ds, "Modality"), body_part=_s(ds, "BodyPartExamined"),
        series_description=_s(ds, "SeriesDescription"), n_files=len(files), files=tuple(files),
        series_number=int(sn) if sn not in (None, "") else None, sop_class_uid=_s(ds, "SOPClassUID"),
        frame_of_reference_uid=_s(ds, "FrameOfReferenceUID"), **kw)


def find_series(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    recursive: bool = True,
    include_image_files: bool = True,
    progress: bool = False,
) -> SeriesIndex:
    """Index files and folders into loadable volumes, reading DICOM headers only (``stop_before_pixels``).

    Args:
        inputs: files and/or folders (folders are walked, sorted, recursively unless ``recursive=False``).
        recursive: walk sub-folders.
        include_image_files: index NIfTI/NRRD/MHA files as one-file records (``kind="nifti"``/``"itk"``);
            otherwise they are skipped as ``not_dicom``.
        progress: show a tqdm bar while reading headers.

    Returns:
        A :class:`SeriesIndex`; ``index.series`` sorted by (study, series number, key) and every input file exactly
        once in ``index.files`` (in walk order).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = _iter_files(inputs, recursive)
    status: dict[str, FileRecord] = {}
    singles: dict[tuple, list[dict]] = defaultdict(list)
    records: list[SeriesRecord] = []
    multiframes: list[tuple[str, object]] = []
    seen_sops: dict[str, str] = {}
    it = paths
    if progress:
        from tqdm import tqdm
        it = tqdm(paths, desc="indexing", unit="file")
    for path in it:
        kind = is_image_file(path)
        if kind and include_image_files:
            rec = SeriesRecord(key=path, kind=kind, study_uid="", series_uid="", modality="", body_part="",
                               series_description=Path(path).name, n_files=1, files=(path,))
            records.append(rec)
            status[path] = FileRecord(path, "series", series_key=path)
            continue
        ds, bad = read_header(path)
        if bad is None and is_localizer(ds):
            bad = ("localizer", f"localizer/scout image (ImageType {list(ds.get('ImageType') or [])})")
        if bad is None:
            sop = _s(ds, "SOPInstanceUID")
            if sop and sop in seen_sops:
                bad = ("duplicate_instance", f"same SOPInstanceUID as {seen_sops[sop]}")
            elif sop:
                seen_sops[sop] = path
        if bad is not None:
            status[path] = FileRecord(path, "skipped", *bad)
            continue
        if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
            multiframes.append((path, ds))
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            status[path] = FileRecord(path, "skipped", "unsupported",
                                      "multi-frame object without functional-group geometry (cine/NM/US)")
            continue
        e = _entry(path, ds)
        if isinstance(e, tuple):
            status[path] = FileRecord(path, "skipped", *e)
            continue
        singles[(e["study"], e["series"], e["for"], e["orientation"], e["size"], e["spacing"])].append(e)

    # single-frame groups -> volumes
    by_series: dict[str, list[tuple[str, list[dict]]]] = defaultdict(list)
    for gkey in sorted(singles, key=lambda k: (k[0], k[1], k[2], k[3], k[4], k[5])):
        entries = singles[gkey]
        split, ok = _split_duplicates(entries)
        if not ok:
            for e in entries:
                status[e["path"]] = FileRecord(e["path"], "skipped", "duplicate_positions",
                                               "several slices at one position and no AcquisitionNumber/EchoNumbers/"
                                               "TemporalPositionIdentifier/TriggerTime/DiffusionBValue separates "
                                               "them (4D or merged series)")
            continue
        siblings = [k for k in singles if k[1] == gkey[1]]
        differs = [i for i in (0, 2, 3, 4, 5) if len({k[i] for k in siblings}) > 1]
        names = {0: f"study {gkey[0]}", 2: f"frame of reference {gkey[2]}", 3: f"orientation {gkey[3]}",
                 4: f"size {gkey[4][1]}x{gkey[4][0]}", 5: f"pixel spacing {gkey[5]}"}
        for label, es in split:
            label = ", ".join([names[i] for i in differs] + ([label] if label else []))
            by_series[gkey[1]].append((label, sorted(es, key=lambda e: e["z"])))
    for series_uid, groups in by_series.items():
        for i, (label, es) in enumerate(groups):
            key = series_uid if len(groups) == 1 else f"{series_uid}#{i + 1}"
            bad = _check_spacing(es)
            if bad:
                for e in es:
                    status[e["path"]] = FileRecord(e["path"], "skipped", bad[0], bad[1])
                continue
            files = [e["path"] for e in es]
            spacing = float(np.median(np.diff([e["z"] for e in es]))) if len(es) > 1 else None
            ds0 = es[0]["ds"]
            records.append(_record(key, "dicom", ds0, files, shape=(es[0]["size"][1], es[0]["size"][0], len(es)),
                                   slice_spacing=spacing, split_by=label))
            for f in files:
                status[f] = FileRecord(f, "series", series_key=key)

    # multi-frame objects: one record per file
    mf_count: dict[str, int] = defaultdict(int)
    for _, ds in multiframes:
        mf_count[_s(ds, "SeriesInstanceUID")] += 1
    mf_seen: dict[str, int] = defaultdict(int)
    for path, ds in multiframes:
        uid = _s(ds, "SeriesInstanceUID")
        mf_seen[uid] += 1
        key = uid if mf_count[uid] == 1 and uid not in by_series else f"{uid}#mf{mf_seen[uid]}"
        shape = (int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), int(ds.get("NumberOfFrames", 1) or 1))
        records.append(_record(key, "dicom-multiframe", ds, [path], shape=shape))
        status[path] = FileRecord(path, "series", series_key=key)

    records.sort(key=lambda r: (r.kind not in ("dicom", "dicom-multiframe"), r.study_uid,
                                r.series_number if r.series_number is not None else 1 << 30, r.key))
    return SeriesIndex(series=records, files=[status[p] for p in paths])
