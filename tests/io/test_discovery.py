"""medad.io.find_volumes (the one volume discovery), the suffix list, LPS<->RAS and the ITK writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import oblique_affine

from medad.io import (IMAGE_FILE_SUFFIXES, find_volumes, is_image_file, itk_affine, load_volume, lps_ras,
                      read_image_geometry, save_itk_image, save_nifti, volume_source)
from medad.io.discovery import volume_stem
from medad.synthetic import write_dicom_series

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def _nifti(path: Path, value: float = 1.0) -> Path:
    from monai.data import MetaTensor

    arr = np.full((1, 6, 5, 4), value, dtype=np.float32)
    return save_nifti(MetaTensor(arr, affine=np.diag([2.0, 2.0, 3.0, 1.0])), path)


def test_sample_data_masks_are_not_studies():
    items = find_volumes(SAMPLE)
    assert [i["name"] for i in items] == ["ct_head_phantom_dicom", "mr_flair_phantom_image"]
    assert [i["series"].kind for i in items] == ["dicom", "nifti"]
    assert Path(items[0]["image"]) == SAMPLE / "ct_head_phantom" / "dicom"
    everything = find_volumes(SAMPLE, exclude=())
    assert sorted(i["name"] for i in everything) == ["ct_head_phantom_dicom", "ct_head_phantom_lesion_mask",
                                                     "mr_flair_phantom_image", "mr_flair_phantom_lesion_mask"]


def test_labels_folders_hidden_files_and_paths_above_the_input(tmp_path):
    root = tmp_path / "labelled_masks_study"   # words of the default patterns above the input folder do not count
    _nifti(root / "imagesTr" / "case_001.nii.gz")
    _nifti(root / "labelsTr" / "case_001.nii.gz")          # nnU-Net layout
    _nifti(root / "labels" / "final" / "case_001.nii.gz")  # MONAI Label's label store
    _nifti(root / ".cache" / "case_002.nii.gz")
    _nifti(root / ".case_003.nii.gz.tmp-1-abc.nii.gz")     # an atomic-write temporary
    assert [i["name"] for i in find_volumes(root)] == ["imagesTr_case_001"]
    assert [i["name"] for i in find_volumes(root / "labelsTr")] == ["case_001"]  # asked for explicitly
    with pytest.raises(ValueError, match="exclude pattern"):
        find_volumes(root / "labelsTr" / "case_001.nii.gz", exclude=["case_*"])
    assert [i["name"] for i in find_volumes(root, exclude=["*imagesTr*"])] == ["labels_final_case_001",
                                                                                "labelsTr_case_001"]


def test_a_dicom_file_stands_for_its_series_and_series_are_split(tmp_path, small_ct):
    hu, _, affine = small_ct
    a = write_dicom_series(hu, affine, tmp_path / "study", seed="a", series_number=3, file_prefix="A")
    write_dicom_series(hu[:, :, :4], affine, tmp_path / "study", seed="b", series_number=7, file_prefix="B")
    one = find_volumes(a[2])
    assert len(one) == 1 and one[0]["series"].n_files == hu.shape[2] and one[0]["name"] == "study"
    both = find_volumes(tmp_path)
    assert sorted(i["name"] for i in both) == ["study_s3", "study_s7"]
    assert sorted(i["series"].n_files for i in both) == [4, hu.shape[2]]
    assert len(find_volumes([tmp_path, tmp_path / "study"])) == 2  # the same series once


def test_one_suffix_list():
    assert set(IMAGE_FILE_SUFFIXES) == {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
    assert is_image_file("A/B.NII.GZ") == "nifti" and is_image_file("x.nhdr") == "itk" and not is_image_file("x.dcm")
    assert [volume_stem(n) for n in ("a.nii.gz", "b.NRRD", "c.dcm", "d.txt")] == ["a", "b", "c", "d.txt"]


def test_volume_source_prefers_the_cached_dicom_folder(tmp_path):
    image = _nifti(tmp_path / "1.2.3.nii.gz")
    assert volume_source(image) == str(image)
    (tmp_path / "1.2.3").mkdir()
    assert volume_source(image) == str(image)  # an empty folder is no series
    (tmp_path / "1.2.3" / "0001.dcm").write_bytes(b"x")
    assert volume_source(image) == str(tmp_path / "1.2.3")


def test_lps_ras_and_itk_geometry(tmp_path):
    from monai.data import MetaTensor

    aff = oblique_affine()
    assert np.array_equal(lps_ras(lps_ras(aff)), aff)
    assert np.array_equal(lps_ras(aff)[:2], -aff[:2]) and np.array_equal(lps_ras(aff)[2:], aff[2:])
    labels = np.random.default_rng(0).integers(0, 4, size=(1, 7, 6, 5)).astype(np.uint8)
    path = save_itk_image(MetaTensor(labels, affine=aff), tmp_path / "label.nrrd")
    img = sitk.ReadImage(str(path))
    assert img.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(itk_affine(img), aff, atol=1e-6)
    size, ref = read_image_geometry(path)
    assert size == (7, 6, 5)
    np.testing.assert_allclose(ref, aff, atol=1e-6)
    back = load_volume(path)
    np.testing.assert_array_equal(back[0].numpy(), labels[0])
    np.testing.assert_allclose(back.affine.numpy(), aff, atol=1e-6)
