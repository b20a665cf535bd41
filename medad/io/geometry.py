"""Patient-coordinate conventions: the one LPS <-> RAS conversion and the ITK (SimpleITK) geometry of an affine.

medad keeps every volume in RAS (``MetaTensor.affine``: voxel index -> RAS mm, as nibabel and MONAI do). DICOM,
ITK/SimpleITK and highdicom describe geometry in LPS. Flipping the first two world axes converts between the two, in
either direction (the flip is its own inverse), so there is one function, :func:`lps_ras`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["lps_ras", "itk_affine", "itk_geometry", "read_image_geometry"]

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
