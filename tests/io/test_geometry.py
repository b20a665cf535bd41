"""Geometry round trips: DICOM series written from a known affine load back with that exact affine and array."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medad.synthetic import write_dicom_series
from medad.io import find_series, load_series, load_volume, read_nifti, save_nifti

from io_helpers import SHAPE, oblique_affine, rotation

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _sitk_affine_and_array(folder):
    """Affine (RAS, X=columns, Y=rows, Z=slices) and [X, Y, Z] array as SimpleITK/GDCM reads the folder."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    img = reader.Execute()
    aff = np.eye(4)
    aff[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return LPS @ aff, sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)


def _flipped_affine():
    aff = oblique_affine()
    aff[:3, :3] = np.diag([1.0, 1.0, 1.0]) @ np.diag([0.8, 1.25, 2.5])  # columns to R, rows to A: both flipped
    return aff


def _sagittal_affine():
    aff = np.eye(4)
    aff[:3, :3] = rotation("y", 90) @ rotation("x", 90) @ np.diag([1.0, 1.0, 3.5])
    aff[:3, 3] = (-20.0, 30.0, -40.0)
    return aff


@pytest.mark.parametrize("name, affine_fn, descending", [
    ("axial", lambda: None, False),
    ("flipped", _flipped_affine, False),
    ("oblique", oblique_affine, False),
    ("oblique_descending", oblique_affine, True),
    ("sagittal_descending", _sagittal_affine, True),
])
def test_dicom_round_trip_matches_generator_and_simpleitk(tmp_path, small_ct, name, affine_fn, descending):
    hu, _, default = small_ct
    affine = default if affine_fn() is None else affine_fn()
    files = write_dicom_series(hu, affine, tmp_path / name, seed=name, descending_instance_numbers=descending)
    index = find_series([tmp_path / name])
    assert [s.n_files for s in index.series] == [SHAPE[2]]
    rec = index.series[0]
    assert rec.shape == SHAPE and rec.slice_spacing == pytest.approx(np.linalg.norm(affine[:3, 2]), abs=1e-6)
    vol = load_series(rec)
    assert isinstance(vol.affine, torch.Tensor) and vol.shape == (1, *SHAPE) and vol.dtype == torch.float32
    # the normal points along +Z for all these affines, so the generator's layout must come back unchanged
    np.testing.assert_allclose(vol.affine.numpy(), affine, atol=1e-5)
    np.testing.assert_array_equal(vol[0].numpy(), hu)
    assert vol.meta["source_files"] == [str(f) for f in files]  # Z order, whatever the InstanceNumbers say
    sitk_aff, sitk_arr = _sitk_affine_and_array(tmp_path / name)
    np.testing.assert_allclose(vol.affine.numpy(), sitk_aff, atol=1e-5)
    np.testing.assert_array_equal(vol[0].numpy(), sitk_arr)
    assert vol.meta["modality"] == "CT" and vol.meta["space"] == "RAS"
    np.testing.assert_allclose(vol.meta["spacing"], np.linalg.norm(affine[:3, :3], axis=0), atol=1e-5)


def test_slice_axis_against_normal_is_reversed(tmp_path, small_ct):
    """A generator affine whose Z runs against the slice normal loads with Z along the normal (like GDCM)."""
    hu, _, affine = small_ct
    rev = affine.copy()
    rev[:3, 2] *= -1
    write_dicom_series(hu, rev, tmp_path / "s", seed="rev")
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol[0].numpy(), hu[:, :, ::-1])
    expect = affine.copy()
    expect[:3, 3] = rev[:3, 3] + rev[:3, 2] * (SHAPE[2] - 1)
    np.testing.assert_allclose(vol.affine.numpy(), expect, atol=1e-5)
    # the same physical voxel has the same world position in both layouts
    ijk = np.array([3, 5, 2, 1.0])
    np.testing.assert_allclose(rev @ ijk, vol.affine.numpy() @ np.array([3, 5, SHAPE[2] - 1 - 2, 1.0]), atol=1e-5)


def test_load_volume_from_one_dicom_file_loads_its_series(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / "s", seed=1)
    vol = load_volume(files[4])
    assert vol.shape == (1, *SHAPE)
    np.testing.assert_array_equal(vol[0].numpy(), hu)


@pytest.mark.parametrize("affine_fn", [_flipped_affine, oblique_affine])
def test_nifti_load_save_load_is_identical(tmp_path, small_ct, affine_fn):
    import nibabel as nib

    hu, _, _ = small_ct
    affine = affine_fn()
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "a.nii.gz")
    first = load_volume(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(first.affine.numpy(), affine, atol=1e-5)  # float32 header precision
    save_nifti(first, tmp_path / "b.nii.gz")
    second = read_nifti(tmp_path / "b.nii.gz")
    np.testing.assert_array_equal(second.affine.numpy(), first.affine.numpy())
    np.testing.assert_array_equal(second.numpy(), first.numpy())
    assert second.meta["space"] == "RAS" and second.shape == (1, *SHAPE)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_dicom_volume_to_nifti_keeps_geometry(tmp_path, small_ct):
    hu, _, _ = small_ct
    write_dicom_series(hu, oblique_affine(), tmp_path / "s", seed=2)
    vol = load_volume(tmp_path / "s")
    save_nifti(vol, tmp_path / "v.nii.gz")
    back = load_volume(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(back.affine.numpy(), vol.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(back.numpy(), vol.numpy())


def test_enhanced_multiframe_matches_single_frame(tmp_path, small_ct):
    import highdicom as hd
    import pydicom

    hu, _, _ = small_ct
    files = write_dicom_series(hu, oblique_affine(), tmp_path / "single", seed=3, descending_instance_numbers=True)
    legacy = [pydicom.dcmread(f) for f in files]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy, series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(),
        instance_number=1)
    (tmp_path / "mf").mkdir()
    enhanced.save_as(tmp_path / "mf" / "enhanced.dcm")
    index = find_series([tmp_path / "mf"])
    assert [s.kind for s in index.series] == ["dicom-multiframe"]
    mf = load_series(index.series[0])
    single = load_volume(tmp_path / "single")
    np.testing.assert_allclose(mf.affine.numpy(), single.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(mf.numpy(), single.numpy())
    assert mf.meta["source_files"] == [str(tmp_path / "mf" / "enhanced.dcm")]


@pytest.mark.parametrize("syntax", ["rle", "jpegls", "jpeg2000"])
def test_compressed_series_decode_to_same_values(tmp_path, small_ct, syntax):
    import pydicom

    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / syntax, seed=4, transfer_syntax=syntax)
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    vol = load_volume(tmp_path / syntax)
    np.testing.assert_array_equal(vol[0].numpy(), hu)
    np.testing.assert_allclose(vol.affine.numpy(), affine, atol=1e-5)


def test_rescale_slope_intercept_applied(tmp_path, small_ct):
    hu, _, affine = small_ct
    write_dicom_series(hu, affine, tmp_path / "s", seed=5, rescale=(0.5, -1024.0))
    vol = load_volume(tmp_path / "s")
    np.testing.assert_allclose(vol[0].numpy(), np.round((hu + 1024) / 0.5) * 0.5 - 1024, atol=1e-4)


def test_simpleitk_fallback_when_pydicom_cannot_decode(tmp_path, small_ct, monkeypatch):
    import highdicom as hd

    hu, _, _ = small_ct
    write_dicom_series(hu, oblique_affine(), tmp_path / "s", seed=6, transfer_syntax="rle")
    expected = load_volume(tmp_path / "s")

    def no_decoder(*args, **kwargs):
        raise RuntimeError("Unable to decode the pixel data: no plugin")

    monkeypatch.setattr(hd, "get_volume_from_series", no_decoder)
    vol = load_volume(tmp_path / "s")
    np.testing.assert_allclose(vol.affine.numpy(), expected.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(vol.numpy(), expected.numpy())
    assert vol.meta["source_files"] == expected.meta["source_files"]


def test_single_slice_series(tmp_path, small_ct):
    hu, _, affine = small_ct
    write_dicom_series(hu[:, :, 4:5], affine, tmp_path / "one", seed=7)
    vol = load_volume(tmp_path / "one")
    assert vol.shape == (1, SHAPE[0], SHAPE[1], 1)
    np.testing.assert_array_equal(vol[0, :, :, 0].numpy(), hu[:, :, 4])
    np.testing.assert_allclose(vol.affine.numpy()[:3, :2], affine[:3, :2], atol=1e-6)


def test_jpeg_baseline_8bit_series(tmp_path, small_ct):
    """Lossy JPEG baseline (decoded by pylibjpeg-libjpeg): values within JPEG error, geometry exact."""
    import io

    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    hu, _, _ = small_ct
    img8 = np.clip((hu + 100) * 255 / 200, 0, 255).round().astype(np.float32)
    affine = oblique_affine()
    files = write_dicom_series(img8, affine, tmp_path, seed="jpeg", modality="MR", rescale=(1.0, 0.0))
    for f in files:
        ds = pydicom.dcmread(f)
        buf = io.BytesIO()
        Image.fromarray(ds.pixel_array.astype(np.uint8)).save(buf, format="JPEG", quality=95)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(f, enforce_file_format=True)
    vol = load_volume(tmp_path)
    np.testing.assert_allclose(vol.affine.numpy(), affine, atol=1e-5)
    err = np.abs(vol[0].numpy() - img8)
    assert err.mean() < 2.0 and err.max() < 40, (err.mean(), err.max())
