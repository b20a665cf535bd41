"""Shared fixtures for the MONAI bundle tests: paths, sample volumes and a fast bundle configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "mri_ct_slice_anomaly_mvfa"
CONFIGS = BUNDLE / "configs"
SAMPLE = REPO / "sample_data"


def demo_available() -> bool:
    from medad.factory import DEMO_ADAPTERS

    return DEMO_ADAPTERS.is_file()


def model_overrides() -> dict:
    """Overrides to run the bundle's configs from anywhere, as the model zoo's CI does: ``bundle_root`` = the bundle
    folder (its ``bundle_root`` is ``"."``), so ``models/model.pt`` is the shipped demo model. Pass ``output_dir``
    too, or the outputs go to the bundle's ``eval/``."""
    return {"bundle_root": str(BUNDLE)}


@pytest.fixture(scope="session")
def sample_volumes(tmp_path_factory) -> dict[str, Path]:
    """``{"ct_dicom": folder of one CT series, "mr_nifti": MR .nii.gz}``: the committed sample data, or (when it is
    absent) phantoms generated with ``medad.synthetic`` in the same layout."""
    ct = SAMPLE / "ct_head_phantom" / "dicom"
    mr = SAMPLE / "mr_flair_phantom" / "image.nii.gz"
    if ct.is_dir() and mr.is_file():
        return {"ct_dicom": ct, "mr_nifti": mr}
    import nibabel as nib

    from medad.synthetic import make_ct_phantom, make_mr_phantom, write_dicom_series

    root = tmp_path_factory.mktemp("sample")
    hu, _, aff = make_ct_phantom(seed=1, shape=(64, 64, 12))
    write_dicom_series(hu, aff, root / "ct_head_phantom" / "dicom", seed=1)
    img, _, aff = make_mr_phantom(seed=2, shape=(64, 64, 12))
    (root / "mr_flair_phantom").mkdir()
    nib.save(nib.Nifti1Image(img, aff), root / "mr_flair_phantom" / "image.nii.gz")
    return {"ct_dicom": root / "ct_head_phantom" / "dicom", "mr_nifti": root / "mr_flair_phantom" / "image.nii.gz"}


@pytest.fixture(scope="session")
def dataset_dir(sample_volumes, tmp_path_factory) -> Path:
    """A data folder holding the CT DICOM series and the MR NIfTI (and a mask that the config must skip)."""
    root = tmp_path_factory.mktemp("bundle_data")
    shutil.copytree(sample_volumes["ct_dicom"], root / "ct_head" / "dicom")
    (root / "mr").mkdir()
    shutil.copy(sample_volumes["mr_nifti"], root / "mr" / "flair.nii.gz")
    shutil.copy(sample_volumes["mr_nifti"], root / "mr" / "flair_lesion_mask.nii.gz")
    return root
