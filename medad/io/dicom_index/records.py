"""The records of an index: one :class:`FileRecord` per input path, one :class:`SeriesRecord` per series found,
both in a :class:`SeriesIndex`; and the one list of volume file suffixes."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field

__all__ = ["FileRecord", "IMAGE_FILE_SUFFIXES", "SeriesIndex", "SeriesRecord", "is_image_file", "split_image_suffix"]

#: The one list of volume file name endings medad reads (besides DICOM, which is recognised by content), with the
#: reader kind: NIfTI with nibabel, the others with SimpleITK. Longest endings first.
IMAGE_FILE_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "itk", ".nhdr": "itk", ".mha": "itk",
                       ".mhd": "itk"}


@dataclass(frozen=True, slots=True)
class FileRecord:
    """What happened to one input file. ``reason``/``detail`` are empty for files that are part of a series."""

    path: str
    status: str                       # "series" | "skipped"
    reason: str = ""                  # stable code, see the module docstring
    detail: str = ""                  # human explanation (no patient identifiers)
    series_key: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    """One series found: a loadable volume, or (``reason`` set) one that indexing rejected.

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
    reason: str = ""                  # rejected at indexing (a :data:`REASONS` code); "" when loadable
    detail: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        d = asdict(self)
        d["files"] = list(self.files)
        d["shape"] = list(self.shape)
        return d


@dataclass
class SeriesIndex:
    """Result of :func:`find_series`: loadable ``series``, ``rejected`` series (with a reason) and one record per
    input path in ``files``."""

    series: list[SeriesRecord] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    rejected: list[SeriesRecord] = field(default_factory=list)

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
