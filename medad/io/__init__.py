"""DICOM/NIfTI in and out: the one package that owns volume geometry.

Find: :func:`find_volumes` (the volumes to score under files/folders: one item per NIfTI file or DICOM series, masks
left out) over :func:`find_series` (header-only index of any folder tree, with a skip reason for every non-volume
file); :data:`IMAGE_FILE_SUFFIXES` is the one list of volume file endings.
Read: :func:`load_series` / :func:`load_volume` -> ``monai.data.MetaTensor [1, X, Y, Z]`` float32, exact RAS affine.
Geometry: :func:`lps_ras` (the one LPS <-> RAS conversion), :func:`itk_affine`, :func:`itk_geometry`.
Write (all atomic, :mod:`medad.io._atomic`): :func:`save_nifti`, :func:`save_itk_image`, :func:`write_parametric_map`,
:func:`write_segmentation`, :func:`save_overlay_png`; upload: :func:`stow`.

Names are imported on first use, so ``import medad.io._atomic`` (used by the checkpoint and weight writers) does not
import pydicom, highdicom or MONAI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "dicom_index": ("DAMAGE_REASONS", "FileRecord", "IMAGE_FILE_SUFFIXES", "REASONS", "SeriesIndex", "SeriesRecord",
                    "find_series", "is_image_file"),
    "discovery": ("DEFAULT_EXCLUDE", "find_volumes", "volume_source"),
    "dicom_outputs": ("write_parametric_map", "write_segmentation"),
    "dicomweb": ("StowError", "StowResult", "stow"),
    "readers": ("SeriesLoadError", "itk_affine", "itk_geometry", "load_series", "load_volume", "lps_ras",
                "metatensor_from_hd_volume", "read_image_geometry", "read_nifti"),
    "writers": ("heat_colormap", "save_itk_image", "save_nifti", "save_overlay_png"),
    "_atomic": ("atomic_path", "write_text_atomic"),
    "_header": ("clean_message",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'medad.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names are loaded on first use
    from ._atomic import atomic_path, write_text_atomic
    from ._header import clean_message
    from .dicom_index import (DAMAGE_REASONS, IMAGE_FILE_SUFFIXES, REASONS, FileRecord, SeriesIndex, SeriesRecord,
                              find_series, is_image_file)
    from .dicom_outputs import write_parametric_map, write_segmentation
    from .dicomweb import StowError, StowResult, stow
    from .discovery import DEFAULT_EXCLUDE, find_volumes, volume_source
    from .readers import (SeriesLoadError, itk_affine, itk_geometry, load_series, load_volume, lps_ras,
                          metatensor_from_hd_volume, read_image_geometry, read_nifti)
    from .writers import heat_colormap, save_itk_image, save_nifti, save_overlay_png
