"""Phantoms are deterministic, lesions are visible and in tissue, and the committed sample data is what the script
writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medad.synthetic import make_ct_phantom, make_mr_phantom
from medad.io import find_series, load_volume

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


@pytest.mark.parametrize("region", ["head", "abdomen"])
def test_ct_phantom_deterministic_and_lesions_visible(region):
    hu, mask, affine = make_ct_phantom(11, (96, 96, 16), n_lesions=3, region=region)
    hu2, mask2, affine2 = make_ct_phantom(11, (96, 96, 16), n_lesions=3, region=region)
    assert hu.dtype == np.float32 and mask.dtype == np.uint8 and affine.shape == (4, 4)
    np.testing.assert_array_equal(hu, hu2)
    np.testing.assert_array_equal(mask, mask2)
    assert not np.array_equal(hu, make_ct_phantom(12, (96, 96, 16), n_lesions=3, region=region)[0])
    assert np.array_equal(hu, np.round(hu))  # whole HU: lossless with RescaleSlope 1
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    assert n == 3
    ring = ndimage.binary_dilation(mask > 0, iterations=3) & ~ndimage.binary_dilation(mask > 0, iterations=1)
    contrasts = []
    for i in range(1, n + 1):
        les = labels == i
        around = ndimage.binary_dilation(les, iterations=3) & ring
        contrasts.append(float(np.median(hu[les]) - np.median(hu[around])))
    assert all(abs(c) >= 20 for c in contrasts), contrasts  # visible in a soft-tissue/brain window
    assert any(c >= 40 for c in contrasts) and any(c <= -20 for c in contrasts)


def test_mr_phantom_bright_lesions():
    img, mask, _ = make_mr_phantom(5, (96, 96, 16), n_lesions=2)
    assert img.min() >= 0 and mask.sum() > 0
    brain = (img > 350) & (mask == 0)
    assert np.median(img[mask > 0]) > 1.4 * np.median(img[brain])
    np.testing.assert_array_equal(img, make_mr_phantom(5, (96, 96, 16), n_lesions=2)[0])


def test_normal_phantom_has_no_lesions():
    _, mask, _ = make_ct_phantom(1, (64, 64, 8), n_lesions=0)
    assert mask.sum() == 0


def test_sample_data_committed_and_consistent():
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest() == digest, rel
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert total < 4 * 2**20
    index = find_series(SAMPLE / "ct_head_phantom")
    assert len(index.series) == 2  # the DICOM series + the mask NIfTI
    ct = load_volume(SAMPLE / "ct_head_phantom" / "dicom")
    mask = load_volume(SAMPLE / "ct_head_phantom" / "lesion_mask.nii.gz")
    assert ct.shape == mask.shape == (1, 128, 128, 32)
    np.testing.assert_allclose(ct.affine.numpy(), mask.affine.numpy(), atol=1e-4)
    hu, m, affine = make_ct_phantom(manifest["ct_head_phantom"]["seed"])
    np.testing.assert_array_equal(ct[0].numpy(), hu)
    np.testing.assert_array_equal(mask[0].numpy(), m)
    ds = pydicom.dcmread(index.series[0].files[0], stop_before_pixels=True)
    assert (ds.Modality, ds.PatientID, str(ds.PatientName)) == ("CT", "ANON-PHANTOM", "PHANTOM^SYNTHETIC")
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    mr = load_volume(SAMPLE / "mr_flair_phantom" / "image.nii.gz")
    img, mr_mask, _ = make_mr_phantom(manifest["mr_flair_phantom"]["seed"])
    np.testing.assert_array_equal(mr[0].numpy(), img)
    np.testing.assert_array_equal(load_volume(SAMPLE / "mr_flair_phantom" / "lesion_mask.nii.gz")[0].numpy(), mr_mask)


def test_sample_data_script_is_deterministic(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample_data", SAMPLE / "make_sample_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.make(tmp_path)["sha256"] == json.loads((SAMPLE / "manifest.json").read_text())["sha256"]
