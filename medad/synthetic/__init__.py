"""Synthetic data generators (phantoms with ground truth) for tests, demos and held-out evaluation."""

from .dicom_series import series_uids, write_dicom_series
from .phantoms import Lesion, default_affine, make_ct_phantom, make_mr_phantom

__all__ = ["Lesion", "default_affine", "make_ct_phantom", "make_mr_phantom", "series_uids", "write_dicom_series"]
