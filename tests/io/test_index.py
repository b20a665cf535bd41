"""find_series: grouping, splitting, and a recorded skip reason for everything that is not an image volume."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, MediaStorageDirectoryStorage, generate_uid

from medad.synthetic import write_dicom_series

SHAPE_Z = 10
from medad.io import SeriesLoadError, find_series, load_series, load_volume, write_segmentation


def _part10(sop_class) -> Dataset:
    """An empty Part-10 data set of ``sop_class`` (file meta filled in)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _sr(path):
    ds = _part10(BasicTextSRStorage)
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", generate_uid(), generate_uid()
    ds.save_as(path, enforce_file_format=True)


def _dicomdir(path):
    ds = _part10(MediaStorageDirectoryStorage)
    ds.FileSetID = "PHANTOM"
    ds.DirectoryRecordSequence = []
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def messy_tree(tmp_path, small_ct):
    """A PACS-export-like tree: one good series plus every kind of file that must be skipped."""
    hu, _, affine = small_ct
    good = write_dicom_series(hu, affine, tmp_path / "study" / "ct", seed="good")
    write_dicom_series(hu[:, :, :3], affine, tmp_path / "study" / "scout", seed="scout", series_number=2,
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    other = tmp_path / "study" / "other"
    other.mkdir()
    _sr(other / "report.dcm")
    _dicomdir(tmp_path / "DICOMDIR")
    (other / "notes.txt").write_text("not an image\n")
    data = good[0].read_bytes()
    (other / "truncated_pixels.dcm").write_bytes(data[:-500])
    (other / "truncated_header.dcm").write_bytes(data[:300])
    ds = pydicom.dcmread(good[1])
    del ds.PixelData
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(other / "no_pixels.dcm")
    shutil.copy(good[2], other / "copy_of_slice3.dcm")
    (other / "broken_link.dcm").symlink_to(tmp_path / "gone.dcm")
    return tmp_path, good


def test_every_file_once_with_a_reason(messy_tree):
    root, good = messy_tree
    index = find_series([root, good[0]])  # overlapping inputs: still one record per file
    all_files = sorted(str(p) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    assert sorted(f.path for f in index.files) == all_files
    by_name = {f.path.split("/")[-1]: f for f in index.files if "/other/" in f.path or f.path.endswith("DICOMDIR")}
    assert by_name["report.dcm"].reason == "non_image" and "SR" in by_name["report.dcm"].detail
    assert by_name["DICOMDIR"].reason == "dicomdir"
    assert by_name["notes.txt"].reason == "not_dicom"
    assert by_name["truncated_pixels.dcm"].reason == "truncated"
    assert by_name["truncated_header.dcm"].reason in ("truncated", "unreadable")
    assert by_name["no_pixels.dcm"].reason == "no_pixel_data"
    assert by_name["copy_of_slice3.dcm"].reason == "duplicate_instance"
    assert by_name["broken_link.dcm"].reason == "broken_link" and "does not exist" in by_name["broken_link.dcm"].detail
    scouts = [f for f in index.files if "/scout/" in f.path]
    assert len(scouts) == 3 and {f.reason for f in scouts} == {"localizer"}
    assert len(index.series) == 1 and index.series[0].n_files == len(good)
    assert index.series[0].files == tuple(str(p) for p in good)
    assert {f.status for f in index.files if "/ct/" in f.path} == {"series"}
    assert all(f.status == "skipped" and f.detail for f in index.skipped)
    assert index.reasons()["localizer"] == 3


def test_derived_outputs_are_skipped_as_non_image(tmp_path, small_ct):
    hu, _, affine = small_ct
    write_dicom_series(hu, affine, tmp_path / "ct", seed="seg")
    vol = load_volume(tmp_path / "ct")
    graded = (vol.clone() * 0 + 1).to(torch.uint8)  # one grade everywhere
    write_segmentation(graded, vol.meta["source_files"], tmp_path / "ct" / "seg.dcm", labels=["anomaly"],
                       series_uid=generate_uid(), sop_instance_uid=generate_uid())
    index = find_series(tmp_path)
    seg = [f for f in index.files if f.path.endswith("seg.dcm")][0]
    assert seg.reason == "non_image" and "Segmentation" in seg.detail
    assert len(index.series) == 1


def test_folder_with_two_series(tmp_path, small_ct):
    hu, _, affine = small_ct
    write_dicom_series(hu, affine, tmp_path, seed="a", series_number=3, file_prefix="A")
    write_dicom_series(hu[:, :, :6] + 10, affine, tmp_path, seed="a", series_number=4, file_prefix="B")
    index = find_series([tmp_path])
    assert [s.n_files for s in index.series] == [10, 6]
    assert [s.series_number for s in index.series] == [3, 4]
    assert len({s.study_uid for s in index.series}) == 1 and len({s.series_uid for s in index.series}) == 2
    b = load_series(index.series[1])
    np.testing.assert_array_equal(b[0].numpy(), hu[:, :, :6] + 10)
    with pytest.raises(SeriesLoadError, match="holds 2 series") as err:
        load_volume(tmp_path)
    assert index.series[0].key in str(err.value) and index.series[1].key in str(err.value)


def test_gappy_series_rejected_with_reason(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / "gap", seed="gap")
    files[4].unlink()
    index = find_series(tmp_path / "gap")
    assert index.series == []
    reasons = {f.reason for f in index.files}
    assert reasons == {"irregular_spacing"}
    assert "missing slices" in index.files[0].detail and "16 mm" in index.files[0].detail
    with pytest.raises(SeriesLoadError, match="irregular_spacing"):
        load_volume(tmp_path / "gap")


def test_mixed_acquisitions_are_split(tmp_path, small_ct):
    """One SeriesInstanceUID holding two acquisitions at the same positions gives two volumes."""
    hu, _, affine = small_ct
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    common = dict(series_uid=uid, study_uid=study, frame_of_reference_uid=frame)
    write_dicom_series(hu, affine, tmp_path, seed="m1", acquisition_number=1, file_prefix="A", **common)
    write_dicom_series(hu + 5, affine, tmp_path, seed="m2", acquisition_number=2, file_prefix="B", **common)
    index = find_series(tmp_path)
    assert [s.key for s in index.series] == [f"{uid}#1", f"{uid}#2"]
    assert [s.split_by for s in index.series] == ["AcquisitionNumber=1", "AcquisitionNumber=2"]
    np.testing.assert_array_equal(load_series(index.series[1])[0].numpy(), hu + 5)


def test_nifti_files_are_indexed_and_non_recursive(tmp_path, small_ct):
    import nibabel as nib

    hu, _, affine = small_ct
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "vol.nii.gz")
    (tmp_path / "sub").mkdir()
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "sub" / "deeper.nii")
    index = find_series(tmp_path, recursive=False)
    assert [s.kind for s in index.series] == ["nifti"] and index.series[0].key.endswith("vol.nii.gz")
    assert load_series(index.series[0]).shape == (1, *hu.shape)
    assert len(find_series(tmp_path).series) == 2
    assert find_series(tmp_path, include_image_files=False).reasons() == {"not_dicom": 2}


def test_mixed_orientations_are_split_and_labelled(tmp_path, small_ct):
    from io_helpers import oblique_affine

    hu, _, affine = small_ct
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    common = dict(series_uid=uid, study_uid=study, frame_of_reference_uid=frame)
    write_dicom_series(hu, affine, tmp_path, seed="o1", file_prefix="A", **common)
    write_dicom_series(hu[:, :, :4], oblique_affine(), tmp_path, seed="o2", file_prefix="B", **common)
    index = find_series(tmp_path)
    assert sorted(s.n_files for s in index.series) == [4, 10]
    assert all(s.split_by.startswith("orientation (") for s in index.series)
    assert {s.key for s in index.series} == {f"{uid}#1", f"{uid}#2"}


def _rewrite(files, fn):
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        fn(k, ds)
        ds.save_as(f)


def test_gantry_tilt_rejected(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path, seed="tilt")

    def shift(k, ds):  # slide each slice 2 mm along y: stacked ~14 deg off the normal
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 2.0 * k, ipp[2]]

    _rewrite(files, shift)
    index = find_series(tmp_path)
    assert index.series == [] and {f.reason for f in index.files} == {"gantry_tilt"}
    assert "deg off the slice normal" in index.files[0].detail


def test_per_slice_acquisitions_stay_one_volume_and_4d_is_rejected(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path / "seq", seed="seq")
    _rewrite(files, lambda k, ds: setattr(ds, "AcquisitionNumber", k + 1))  # sequential CT: one acquisition/slice
    assert [s.n_files for s in find_series(tmp_path / "seq").series] == [SHAPE_Z]
    uid, study, frame = generate_uid(), generate_uid(), generate_uid()
    common = dict(series_uid=uid, study_uid=study, frame_of_reference_uid=frame)
    write_dicom_series(hu, affine, tmp_path / "4d", seed="t1", file_prefix="A", **common)
    write_dicom_series(hu, affine, tmp_path / "4d", seed="t2", file_prefix="B", **common)
    index = find_series(tmp_path / "4d")
    assert index.series == [] and index.reasons() == {"duplicate_positions": 2 * SHAPE_Z}


def test_truncated_compressed_file(tmp_path, small_ct):
    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path, seed="jls", transfer_syntax="jpegls")
    data = files[3].read_bytes()
    files[3].write_bytes(data[:-100])
    index = find_series(tmp_path)
    assert [f.reason for f in index.files if f.path == str(files[3])] == ["truncated"]
    # the rest of the series now has a gap and is rejected too
    assert {f.reason for f in index.files if f.path != str(files[3])} == {"irregular_spacing"}


def test_cuts_anywhere_are_truncated(tmp_path, small_ct):
    """A file cut inside its file meta, its header or its pixel data is 'truncated' (damaged), never loadable."""
    hu, _, affine = small_ct
    data = write_dicom_series(hu[:, :, :1], affine, tmp_path / "src", seed="cut")[0].read_bytes()
    cuts = [150, 333, 555, 777, 999, len(data) - 1000, len(data) - 1]
    for c in cuts:
        (tmp_path / f"cut{c}.dcm").write_bytes(data[:c])
    index = find_series(tmp_path, recursive=False)
    assert [f.reason for f in index.files] == ["truncated"] * len(cuts), [(f.path, f.detail) for f in index.files]


def test_files_without_preamble_are_read(tmp_path, small_ct):
    """Old PACS exports write bare data sets (no 128-byte preamble, no 'DICM', no file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    hu, _, affine = small_ct
    files = write_dicom_series(hu, affine, tmp_path, seed="bare")
    for f in files:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_dataset(buf, Dataset(pydicom.dcmread(f)))
        f.write_bytes(buf.getvalue())
    assert files[0].read_bytes()[:2] == b"\x08\x00"
    index = find_series(tmp_path)
    assert [s.n_files for s in index.series] == [SHAPE_Z]
    np.testing.assert_array_equal(load_series(index.series[0])[0].numpy(), hu)
