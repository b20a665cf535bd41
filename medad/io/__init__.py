"""DICOM/NIfTI in and out: the one module that owns volume geometry.

Read: :func:`find_series` (header-only index of any folder tree, with a skip reason for every non-volume file),
:func:`load_series` / :func:`load_volume` -> ``monai.data.MetaTensor [1, X, Y, Z]`` float32, exact RAS affine.
Write (all atomic): :func:`save_nifti`, :func:`write_parametric_map`, :func:`write_segmentation`,
:func:`save_overlay_png`; upload: :func:`stow`.
"""

from .dicom_index import FileRecord, SeriesIndex, SeriesRecord, find_series
from .dicom_outputs import (
    DEFAULT_SEGMENT_LABELS,
    DEFAULT_THRESHOLDS,
    grade_map,
    write_parametric_map,
    write_segmentation,
)
from .dicomweb import StowError, StowResult, stow
from .readers import SeriesLoadError, load_series, load_volume, metatensor_from_hd_volume, read_nifti
from .writers import heat_colormap, save_nifti, save_overlay_png, write_nifti

__all__ = [
    "DEFAULT_SEGMENT_LABELS",
    "DEFAULT_THRESHOLDS",
    "FileRecord",
    "SeriesIndex",
    "SeriesLoadError",
    "SeriesRecord",
    "StowError",
    "StowResult",
    "find_series",
    "grade_map",
    "heat_colormap",
    "load_series",
    "load_volume",
    "metatensor_from_hd_volume",
    "read_nifti",
    "save_nifti",
    "save_overlay_png",
    "stow",
    "write_parametric_map",
    "write_nifti",
    "write_segmentation",
]
