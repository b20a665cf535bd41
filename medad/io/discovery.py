"""Volume discovery: the one function that turns files and folders into a list of volumes to score.

:func:`find_volumes` builds on the header index :func:`medad.io.find_series` and adds what every front-end needs on
top of it: one item per volume (a NIfTI/NRRD/MHA file, or one DICOM series: several series in one folder are
separate items, never stacked), ground-truth masks and label maps left out, and a stable, anonymous output name per
volume. The MONAI bundle's data list and the MONAI Label app's support studies both come from it.

Semantics (where the earlier copies in the bundle and the Label app differed):

- sub-folders are walked (``recursive=True``) and every DICOM series is found by its headers, so a folder holding
  two series gives two volumes and a single DICOM file stands for the whole series it belongs to (as
  :func:`medad.io.load_volume` reads it);
- ``exclude`` glob patterns (default :data:`DEFAULT_EXCLUDE`: ``*mask*``, ``*label*``) are matched against each
  file's path relative to the input folder and against its name; a volume whose files all match is left out. This
  keeps ``lesion_mask.nii.gz`` next to an image, nnU-Net ``labelsTr/`` and MONAI Label's ``labels/`` folder out of
  the volumes, and never looks at the part of the path above the input folder;
- hidden files and folders (names starting with ``.``: caches, medad's atomic-write temporaries) are not volumes.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path, PurePath

from .dicom_index import SeriesRecord, find_series, is_image_file, split_image_suffix

__all__ = ["DEFAULT_EXCLUDE", "find_volumes", "safe_name", "volume_source", "volume_stem"]

log = logging.getLogger(__name__)

#: Name patterns of files that are not studies to score: ground-truth masks and label maps.
DEFAULT_EXCLUDE = ("*mask*", "*label*")


def safe_name(name: str) -> str:
    """``name`` reduced to ``[A-Za-z0-9._-]`` (runs of other characters -> ``_``), never empty."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume suffix (``.nii.gz``, ``.nrrd``, ... or ``.dcm``)."""
    name = PurePath(str(path)).name
    stem, suffix = split_image_suffix(name)
    if not suffix and name.lower().endswith(".dcm"):
        return name[:-4]
    return stem


def volume_source(image: str | os.PathLike) -> str:
    """The DICOM series folder behind an image file when there is one, else the path itself.

    A DICOMweb cache (MONAI Label's) keeps a series as ``<cache>/<SeriesInstanceUID>/`` (DICOM files) next to
    ``<cache>/<SeriesInstanceUID>.nii.gz`` (its conversion). Reading the DICOM folder keeps the modality and the
    source instances a Parametric Map and SEG must reference.
    """
    image = str(image)
    folder, suffix = split_image_suffix(image)
    if suffix and os.path.isfile(image) and os.path.isdir(folder) and any(os.scandir(folder)):
        return folder
    return image


def _match(rel: str, patterns: Sequence[str]) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    return next((p for p in patterns if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p)), None)


def _records(item: Path, recursive: bool) -> tuple[list[SeriesRecord], dict[str, int]]:
    """The volumes of one input and its skipped-file counts; a single DICOM file stands for its series."""
    if item.is_dir() or is_image_file(item):
        index = find_series([item], recursive=recursive, include_image_files=True)
        return index.series, index.reasons()
    index = find_series([item.parent], recursive=False, include_image_files=False)
    mine = os.path.abspath(item)
    found = [rec for rec in index.series if mine in rec.files]
    if found:
        return found, {}
    why = next((f.reason for f in index.files if f.path == mine), "not_indexed")
    return [], {why: 1}


def find_volumes(inputs: str | os.PathLike | Sequence[str | os.PathLike], *, recursive: bool = True,
                 exclude: Sequence[str] = DEFAULT_EXCLUDE) -> list[dict]:
    """Data list of the volumes under ``inputs`` (files and/or folders).

    Args:
        inputs: a file or folder, or a list of them.
        recursive: walk sub-folders.
        exclude: glob patterns of files that are not volumes to score (see the module docstring); ``()`` keeps
            everything.

    Returns:
        ``[{"image": path, "series": SeriesRecord, "name": unique output stem}, ...]`` in input order (within a
        folder: DICOM series first, then files by path). ``image`` is the file (NIfTI/NRRD/MHA) or the folder holding
        the series (DICOM); load an item with ``medad.io.load_series(item["series"])``. ``name`` is the path
        relative to the input folder with ``/`` -> ``_`` and without suffix (``ct_head/dicom`` -> ``ct_head_dicom``,
        ``mr/image.nii.gz`` -> ``mr_image``), plus ``_s<SeriesNumber>`` when a folder holds several series: no UIDs
        or patient data.

    Raises:
        FileNotFoundError: an input does not exist. ValueError: nothing loadable was found (the message counts the
        skipped files per reason), or every volume matches an ``exclude`` pattern.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for p in items:
        if not Path(p).exists():
            raise FileNotFoundError(f"input {p} does not exist")
    found: list[tuple[SeriesRecord, Path | None]] = []   # (record, input folder it was found in)
    seen: set[tuple[str, ...]] = set()
    reasons: dict[str, int] = {}
    for p in items:
        root = Path(p).resolve()
        records, skipped = _records(root, recursive)
        for reason, n in skipped.items():
            reasons[reason] = reasons.get(reason, 0) + n
        for rec in records:
            if rec.files not in seen:
                seen.add(rec.files)
                found.append((rec, root if root.is_dir() else None))
    if not found:
        raise ValueError(f"no loadable volume (NIfTI/NRRD/MHA file or DICOM image series) in {items}; "
                         f"skipped files by reason: {reasons}")

    def rel(path: str, root: Path | None) -> str:
        q = Path(path).resolve()
        if root is not None and (q == root or root in q.parents):
            return q.relative_to(root).as_posix() or "."
        return q.name

    kept: list[tuple[SeriesRecord, Path | None]] = []
    for rec, root in found:
        rels = [rel(f, root) for f in rec.files]
        if any(part.startswith(".") and part != "." for r in rels for part in r.split("/")):
            continue
        hit = [_match(r, exclude) for r in rels]
        if all(hit):
            log.info("not a volume to score (exclude pattern %r): %s", hit[0], rels[0])
            continue
        kept.append((rec, root))
    if not kept:
        raise ValueError(f"every volume in {items} matches an exclude pattern {list(exclude)} or is hidden")

    per_folder: dict[str, int] = {}
    for rec, _ in kept:
        if rec.kind not in ("nifti", "itk"):
            folder = os.path.dirname(rec.files[0])
            per_folder[folder] = per_folder.get(folder, 0) + 1
    out, used = [], set()
    for rec, root in kept:
        if rec.kind in ("nifti", "itk"):
            image = rec.files[0]
            name = volume_stem(rel(image, root).replace("/", "_"))
        else:
            image = os.path.dirname(rec.files[0])
            r = rel(image, root)
            name = (root.name if r == "." else r.replace("/", "_"))
            if per_folder[image] > 1 and rec.series_number is not None:
                name += f"_s{rec.series_number}"
        name = base = safe_name(name)
        i = 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        out.append({"image": image, "series": rec, "name": name})
    return out
