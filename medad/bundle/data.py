"""Data lists of volumes (NIfTI files and DICOM series, one item per series) and their loading transform."""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

__all__ = ["find_volumes", "LoadVolumed", "output_name"]


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume"


def find_volumes(inputs: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool = True,
                 exclude: Sequence[str] = ()) -> list[dict]:
    """Data list of the volumes under ``inputs`` (files and/or folders): one item per NIfTI/NRRD/MHA file and per
    DICOM series (several series in one folder are separate items), via :func:`medad.io.find_series`.

    ``exclude``: ``fnmatch`` patterns on NIfTI/NRRD/MHA file names to leave out (e.g. ``["*mask*"]`` for ground-truth
    masks stored next to the images).

    Returns:
        ``[{"image": path, "series": SeriesRecord, "name": unique output stem}, ...]``. ``image`` is the file
        (NIfTI) or the folder holding the series (DICOM). ``name`` is the path relative to the input folder with
        ``/`` -> ``_`` and without extension (``ct_head/dicom`` -> ``ct_head_dicom``, ``mr/image.nii.gz`` ->
        ``mr_image``), plus ``_s<SeriesNumber>`` when a folder holds several series: no UIDs or patient data.

    Raises:
        FileNotFoundError: an input does not exist. ValueError: nothing loadable was found (the message counts the
        skipped files per reason).
    """
    from ..io import find_series

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for p in items:
        if not Path(p).exists():
            raise FileNotFoundError(f"input {p} does not exist (set --dataset_dir or --datalist to your data)")
    index = find_series([str(p) for p in items], recursive=recursive, include_image_files=True)
    if not index.series:
        raise ValueError(f"no loadable volume (NIfTI/NRRD/MHA file or DICOM image series) in {items}; "
                         f"skipped files by reason: {index.reasons()}")
    roots = [Path(p).resolve() for p in items]

    def rel_name(path: str) -> str:
        """``path`` relative to the input folder holding it (the file/folder name for a direct input)."""
        q = Path(path).resolve()
        for r in roots:
            if r.is_dir() and (q == r or r in q.parents):
                rel = q.relative_to(r)
                return "_".join(rel.parts) if rel.parts else r.name
        return q.name

    dicom = [rec for rec in index.series if rec.kind not in ("nifti", "itk")]
    per_folder: dict[str, int] = {}
    for rec in dicom:
        folder = os.path.dirname(rec.files[0])
        per_folder[folder] = per_folder.get(folder, 0) + 1
    out, used = [], set()
    for rec in index.series:
        if rec.kind in ("nifti", "itk"):
            if any(fnmatch.fnmatch(Path(rec.files[0]).name, pat) for pat in exclude):
                continue
            image = rec.files[0]
            name = _stem(rel_name(image))
        else:
            image = os.path.dirname(rec.files[0])
            name = rel_name(image)
            if per_folder[image] > 1:
                name += f"_s{rec.series_number}" if rec.series_number is not None else ""
        name, base, i = _safe(name), _safe(name), 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        out.append({"image": image, "series": rec, "name": name})
    if not out:
        raise ValueError(f"every volume in {items} matches an exclude pattern {list(exclude)}")
    return out


class LoadVolumed(MapTransform):
    """Load the volume of each data-list item as ``MetaTensor [1, X, Y, Z]`` with :mod:`medad.io`.

    Items from :func:`find_volumes` are loaded from their ``SeriesRecord`` (key ``series_key``, removed afterwards
    so batches collate); a bare ``{"image": path}`` (a NIfTI file, a DICOM file or a one-series folder) goes through
    :func:`medad.io.load_volume`. The item's ``name`` (or the file stem) is stored as ``meta["output_name"]``.
    """

    def __init__(self, keys: KeysCollection = "image", series_key: str = "series", name_key: str = "name",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.series_key = series_key
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from ..io import load_series, load_volume

        d = dict(data)
        record = d.pop(self.series_key, None)
        name = d.pop(self.name_key, None)
        for key in self.key_iterator(d):
            src = d[key]
            if isinstance(src, MetaTensor):
                continue
            vol = load_series(record) if record is not None else load_volume(src)
            vol.meta["output_name"] = _safe(name) if name else _safe(_stem(str(src)))
            d[key] = vol
        return d



def output_name(meta: Mapping) -> str:
    """Output stem of a volume: ``meta["output_name"]`` from :class:`LoadVolumed`, else the input file stem."""
    name = meta.get("output_name") if meta else None
    return _safe(str(name)) if name else _safe(_stem(str((meta or {}).get("filename_or_obj", "volume"))))
