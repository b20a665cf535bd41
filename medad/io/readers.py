"""Load volumes as ``monai.data.MetaTensor [1, X, Y, Z]`` float32 with an exact voxel->RAS ``affine``.

* DICOM single-frame series (any order of files / InstanceNumbers, flipped or oblique orientation, compressed transfer
  syntaxes decoded by pydicom's pylibjpeg/openjpeg/RLE/JPEG-LS plugins, SimpleITK/GDCM as a fallback) and enhanced or
  legacy-converted multi-frame objects are read with highdicom (regular spacing is validated, RescaleSlope/Intercept
  applied). ``X`` runs along the image columns, ``Y`` along the rows and ``Z`` along the slice normal
  (row direction x column direction), as SimpleITK/GDCM lay out a series.
* NIfTI with nibabel (the header's sform/qform affine, scl_slope applied); NRRD/MHA with SimpleITK.

``meta`` keys: ``filename_or_obj``, ``source_files`` (DICOM, in ``Z`` order), ``modality``, ``study_uid``,
``series_uid``, ``series_key``, ``series_number`` (when the series has one), ``frame_of_reference_uid``,
``body_part``, ``series_description``, ``spacing`` (``[sx, sy, sz]`` mm), ``original_affine``, ``spatial_shape``,
``space`` (``"RAS"``), ``original_channel_dim`` (0).
No patient names or IDs are put in ``meta``.

Coordinate conventions: medad keeps every volume in RAS (``MetaTensor.affine``: voxel index -> RAS mm, as nibabel and
MONAI do); DICOM, ITK/SimpleITK and highdicom describe geometry in LPS. Flipping the first two world axes converts
between the two in either direction (the flip is its own inverse): :func:`lps_ras` is the one conversion, and
:func:`itk_affine` / :func:`itk_geometry` translate to and from SimpleITK's spacing, direction and origin.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ._header import dcmread_any
from .dicom_index import ORIENTATION_TOL, SeriesRecord, find_series, is_image_file

__all__ = ["SeriesLoadError", "itk_affine", "itk_geometry", "load_series", "load_volume", "lps_ras",
           "metatensor_from_hd_volume", "read_image_geometry", "read_nifti"]



# ------------------------------------------------------------------------------------------- conventions
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_ras(affine) -> np.ndarray:
    """A 4x4 affine (voxel -> world mm) converted from LPS to RAS world coordinates, or from RAS to LPS.

    Returns a new float64 array; the voxel axes are unchanged, only the world x and y axes flip sign.
    """
    return _FLIP @ np.asarray(affine, dtype=np.float64)


def itk_affine(image) -> np.ndarray:
    """The RAS affine of a SimpleITK ``Image`` (or an ``ImageFileReader`` after ``ReadImageInformation``).

    A 2D image becomes one slice of a 3D grid (unit spacing, identity direction along the third axis).
    """
    dim = int(image.GetDimension())
    if dim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got {dim}D")
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing
    lps[:3, 3] = origin
    return lps_ras(lps)


def itk_geometry(affine_ras) -> tuple[Sequence[float], Sequence[float], Sequence[float]]:
    """``(spacing, direction, origin)`` for ``SimpleITK.Image.SetSpacing/SetDirection/SetOrigin`` from a RAS affine."""
    lps = lps_ras(affine_ras)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return spacing.tolist(), (lps[:3, :3] / spacing).flatten().tolist(), lps[:3, 3].tolist()


def read_image_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], np.ndarray]:
    """``(size (X, Y, Z), RAS affine [4, 4])`` of an image file (NIfTI/NRRD/MHA/...), read from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return tuple(int(s) for s in reader.GetSize()), itk_affine(reader)


class SeriesLoadError(ValueError):
    """A series or file could not be turned into a volume; the message says which, why and what to do."""


def _make_metatensor(array_xyz: np.ndarray, affine_ras: np.ndarray, meta: dict) -> MetaTensor:
    """``[X, Y, Z]`` array + RAS affine -> ``MetaTensor [1, X, Y, Z]`` float32 with the standard meta keys."""
    arr = np.ascontiguousarray(array_xyz, dtype=np.float32)
    affine = torch.as_tensor(np.asarray(affine_ras, dtype=np.float64))
    m = {
        "spacing": np.linalg.norm(affine_ras[:3, :3], axis=0),
        "original_affine": np.asarray(affine_ras, dtype=np.float64).copy(),
        "spatial_shape": np.asarray(arr.shape),
        "space": "RAS",
        "original_channel_dim": 0,
    }
    m.update(meta)
    return MetaTensor(torch.from_numpy(arr)[None], affine=affine, meta=m)


def metatensor_from_hd_volume(volume, meta: dict | None = None) -> MetaTensor:
    """Convert a ``highdicom.Volume`` (``[slices, rows, columns]``, LPS) to ``MetaTensor [1, X, Y, Z]`` (RAS).

    ``X`` = columns, ``Y`` = rows, ``Z`` increases along the slice normal (row direction x column direction).
    """
    arr = np.asarray(volume.array)
    if arr.ndim != 3:
        raise SeriesLoadError(f"expected a single-channel grayscale volume, got array shape {arr.shape} "
                              "(colour or multi-channel DICOM is not supported)")
    arr = arr.transpose(2, 1, 0)
    aff = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    normal = np.cross(aff[:3, 0] / np.linalg.norm(aff[:3, 0]), aff[:3, 1] / np.linalg.norm(aff[:3, 1]))
    if float(normal @ aff[:3, 2]) < 0:
        arr = arr[:, :, ::-1]
        aff[:3, 3] += aff[:3, 2] * (arr.shape[2] - 1)
        aff[:3, 2] *= -1
    return _make_metatensor(arr, lps_ras(aff), dict(meta or {}))


def _dicom_meta(ds, record: SeriesRecord | None, source: str, files: list[str]) -> dict:
    number = ds.get("SeriesNumber")
    return {
        "filename_or_obj": source,
        "source_files": list(files),
        "modality": str(ds.get("Modality", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "series_key": record.key if record is not None else str(ds.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "body_part": str(ds.get("BodyPartExamined", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        **({"series_number": int(number)} if number not in (None, "") else {}),  # no None: MONAI collates meta
    }


def _sort_files_along_z(files: list[str], datasets, mt: MetaTensor) -> list[str]:
    inv = np.linalg.inv(lps_ras(mt.affine.numpy()))  # LPS mm -> voxel
    k = [float((inv @ np.r_[[float(v) for v in ds.ImagePositionPatient], 1.0])[2]) for ds in datasets]
    return [files[i] for i in np.argsort(k)]


def _load_single_frame(record: SeriesRecord) -> MetaTensor:
    import highdicom as hd

    files = list(record.files)
    where = os.path.dirname(files[0])
    try:
        datasets = [dcmread_any(f) for f in files]
    except Exception as e:  # noqa: BLE001
        raise SeriesLoadError(f"series {record.key} in {where}: cannot read a file ({type(e).__name__}: {e})") from e
    frame_of_reference = str(datasets[0].get("FrameOfReferenceUID", ""))
    if not all(ds.get("FrameOfReferenceUID") for ds in datasets):  # type 1, but dropped by some anonymizers
        from pydicom.uid import generate_uid

        frame_of_reference = ""
        synthetic = generate_uid(entropy_srcs=["medad-missing-frame-of-reference", record.key])
        for ds in datasets:  # in memory only, so that highdicom accepts the patient coordinate system
            ds.FrameOfReferenceUID = synthetic
    spacing = datasets[0].get("PixelSpacing")
    for ds in datasets[1:]:  # rounding noise the index grouped within tolerance: highdicom wants equal values
        if spacing is not None and ds.get("PixelSpacing") != spacing and np.allclose(
                [float(v) for v in ds.PixelSpacing], [float(v) for v in spacing], rtol=1e-4, atol=0):
            ds.PixelSpacing = spacing
    try:
        vol = hd.get_volume_from_series(datasets, dtype=np.float32, apply_voi_transform=False,
                                        orientation_tol=ORIENTATION_TOL)
        mt = metatensor_from_hd_volume(vol)
    except (RuntimeError, NotImplementedError, ImportError) as e:  # pixel decoding: fall back to GDCM
        mt = _load_with_simpleitk(files, datasets, e, record.key)
    except ValueError as e:
        raise SeriesLoadError(f"series {record.key} ({record.n_files} files in {where}) is not a regular volume: {e}. "
                              "Check for missing slices or mixed acquisitions (see medad.io.find_series reasons).") from e
    mt.meta.update(_dicom_meta(datasets[0], record, where, _sort_files_along_z(files, datasets, mt)))
    mt.meta["frame_of_reference_uid"] = frame_of_reference
    return mt


def _load_with_simpleitk(files: list[str], datasets, cause: Exception, key: str) -> MetaTensor:
    """Read ``files`` (sorted along the slice normal) with SimpleITK/GDCM when pydicom cannot decode them."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        img = reader.Execute()
    except Exception as e:  # noqa: BLE001
        ts = datasets[0].file_meta.get("TransferSyntaxUID", "?")
        raise SeriesLoadError(
            f"series {key} in {os.path.dirname(files[0])}: cannot decode pixel data (transfer syntax {ts}; "
            f"pydicom: {cause}; GDCM: {e}). Install the matching pylibjpeg plugin or convert with dcmdjpeg.") from e
    return _metatensor_from_sitk(img, {})


def _load_multiframe(record: SeriesRecord) -> MetaTensor:
    import highdicom as hd

    path = record.files[0]
    try:
        img = hd.imread(path)
        vol = img.get_volume(dtype=np.float32, apply_voi_transform=False)
    except Exception as e:  # noqa: BLE001
        raise SeriesLoadError(f"multi-frame file {path} is not a regular 3D volume or cannot be decoded: "
                              f"{type(e).__name__}: {e}") from e
    mt = metatensor_from_hd_volume(vol)
    mt.meta.update(_dicom_meta(img, record, path, [path]))
    return mt


def _metatensor_from_sitk(img, meta: dict) -> MetaTensor:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise SeriesLoadError("only single-channel images are supported")
    arr = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    if dim == 2:
        arr = arr[None]
    elif dim != 3:
        raise SeriesLoadError(f"expected a 2D or 3D image, got {dim}D")
    return _make_metatensor(arr.transpose(2, 1, 0), itk_affine(img), meta)


def read_nifti(path: str | os.PathLike) -> MetaTensor:
    """Read a 2D/3D NIfTI (or a 4D one with a single volume) as ``MetaTensor [1, X, Y, Z]`` with its header affine."""
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.get_fdata(dtype=np.float32))
    if arr.ndim == 2:
        arr = arr[..., None]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise SeriesLoadError(f"{path}: NIfTI has shape {img.shape}; only single 3D volumes are supported "
                              "(split 4D files into 3D volumes first)")
    return _make_metatensor(arr, np.asarray(img.affine, dtype=np.float64),
                            {"filename_or_obj": str(path), "modality": "", "series_description": Path(path).name})


def load_series(record: SeriesRecord) -> MetaTensor:
    """Load one :class:`SeriesRecord` from :func:`medad.io.find_series` as ``MetaTensor [1, X, Y, Z]``."""
    if record.kind == "dicom":
        return _load_single_frame(record)
    if record.kind == "dicom-multiframe":
        return _load_multiframe(record)
    return load_volume(record.files[0])


def load_volume(path: str | os.PathLike) -> MetaTensor:
    """Load a NIfTI/NRRD/MHA file, a DICOM file, or a folder holding exactly one DICOM series.

    A single-frame DICOM file loads the whole series it belongs to (searched in its folder); a multi-frame file loads
    itself. A folder with several series raises :class:`SeriesLoadError` listing them (use :func:`find_series` +
    :func:`load_series` to choose).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    kind = is_image_file(p) if p.is_file() else None
    if kind == "nifti":
        return read_nifti(p)
    if kind == "itk":
        import SimpleITK as sitk

        return _metatensor_from_sitk(sitk.ReadImage(str(p)), {"filename_or_obj": str(p), "modality": ""})
    index = find_series([p if p.is_dir() else p.parent], recursive=p.is_dir(), include_image_files=p.is_dir())
    if p.is_file():
        mine = [f for f in index.files if f.path == os.path.abspath(p)]
        if not mine or mine[0].status != "series":
            why = f"{mine[0].reason}: {mine[0].detail}" if mine else "not indexed"
            raise SeriesLoadError(f"{p} is not part of a loadable volume ({why})")
        return load_series(index[mine[0].series_key])
    if len(index.series) == 0:
        raise SeriesLoadError(f"no loadable volume in {p}; skipped files by reason: {index.reasons()}")
    if len(index.series) > 1:
        listing = "\n".join(f"  {s.key}  {s.modality or s.kind}  {s.n_files} files  '{s.series_description}'"
                            for s in index.series)
        raise SeriesLoadError(f"{p} holds {len(index.series)} series; pick one with medad.io.find_series + "
                              f"load_series, or pass a folder with a single series:\n{listing}")
    return load_series(index.series[0])
