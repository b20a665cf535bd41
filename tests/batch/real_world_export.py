"""A generated "hospital export" with one folder per real-world oddity, next to good series (helpers, no tests here).

:func:`make_real_world_export` writes it and returns ``{case: folder or file}``; :data:`CASES` says what ``medad
score`` must report for each case: the status and reason code of its row in ``results.csv`` (``None`` when the case
makes no row: files that belong to no series) and the status and reason of its files in ``manifest.jsonl``.
Every DICOM case has its own SeriesDescription (the case name), so its row is found by description.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid)

from medad.synthetic import make_ct_phantom, make_mr_phantom, write_dicom_series

SHAPE = (40, 36, 6)
DEPTH = 1100
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

#: case -> (row status, row reason code, file status, file reason). Row reason "" = scored without warning;
#: "own_plane"/"non_finite" = scored with that warning in the error column.
CASES = {
    "good_ct": ("ok", "", "scored", ""),
    "good_mr_nifti": ("ok", "", "scored", ""),
    "fifo": (None, None, "skipped", "not_regular_file"),
    "socket": (None, None, "skipped", "not_regular_file"),
    "excluded_fifo": (None, None, "skipped", "excluded"),
    "deep_tree": (None, None, "skipped", "not_dicom"),
    "huge_header_nifti": ("failed", "truncated", "failed", "truncated"),
    "nan_voxel_nifti": ("ok", "non_finite", "scored", ""),
    "all_inf_dicom": ("failed", "non_finite", "failed", "non_finite"),
    "iop_jitter": ("ok", "", "scored", ""),
    "single_sagittal": ("ok", "own_plane", "scored", ""),
    "thin_coronal": ("ok", "own_plane", "scored", ""),
    "atlas16": ("skipped", "label_map", "skipped", "label_map"),
    "conflict": ("failed", "conflicting_duplicates", "failed", "conflicting_duplicates"),
    "identical_copy": (None, None, "skipped", "duplicate_instance"),
    "deflated": ("ok", "", "scored", ""),
    "slice_gap": ("failed", "irregular_spacing", "failed", "irregular_spacing"),
    "gantry_tilt": ("skipped", "gantry_tilt", "skipped", "gantry_tilt"),
    "four_d": ("skipped", "duplicate_positions", "skipped", "duplicate_positions"),
    "no_uid": ("failed", "missing_uid", "failed", "missing_uid"),
    "singular_affine": ("failed", "bad_geometry", "failed", "bad_geometry"),
    "iop_degenerate": ("failed", "bad_geometry", "failed", "bad_geometry"),
    "pydicom_minimal": ("skipped", "no_pixel_data", "skipped", "no_pixel_data"),
    "zero_byte": (None, None, "failed", "empty_file"),
    "symlinked_folder": (None, None, "skipped", "duplicate_folder"),
    "symlinked_file": (None, None, "skipped", "duplicate_file"),
    "broken_link": (None, None, "failed", "broken_link"),
    "implicit_vr": ("ok", "", "scored", ""),
    "rgb_secondary_capture": ("skipped", "unsupported", "skipped", "unsupported"),
    "dx_projection": ("skipped", "projection", "skipped", "projection"),
    "mip_series": ("skipped", "projection", "skipped", "projection"),
    "dicomdir": (None, None, "skipped", "dicomdir"),
    "zip_archive": (None, None, "skipped", "not_dicom"),
    "blank_series": ("failed", "no_signal", "failed", "no_signal"),
}

#: the good series, scored whatever their neighbours hold
GOOD = ("good_ct", "good_mr_nifti", "iop_jitter", "deflated", "implicit_vr")


def _ct(seed: int, shape=SHAPE):
    return make_ct_phantom(seed, shape, n_lesions=1 if shape[2] > 3 else 0, spacing=(5.0, 5.0, 8.0), noise_hu=3.0)


def _series(root: Path, case: str, seed: int, shape=SHAPE, affine=None, **kw) -> list[Path]:
    hu, _, aff = _ct(seed, shape)
    return write_dicom_series(hu, aff if affine is None else affine, root / f"c_{case}", seed=case, series_number=seed,
                              series_description=case, **kw)


def _rewrite(files, fn) -> None:
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        fn(k, ds)
        ds.save_as(f)


def _plain_2d(path: Path, sop_class, modality: str, rgb: bool, case: str, seed: int) -> None:
    """A 2D image without patient geometry (X-ray, photo)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[case, "sop"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[case, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[case, "series"])
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, case, seed
    ds.PatientName, ds.PatientID = "PHANTOM^SYNTHETIC", "ANON-PHANTOM"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 8, 8, 7, 0
    arr = np.random.default_rng(seed).integers(0, 255, (32, 32, 3) if rgb else (32, 32), dtype=np.uint8)
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)


def make_real_world_export(root: Path) -> dict[str, Path]:
    """Write the export under ``root/export``; returns ``{case: its folder or file}``."""
    ex = root / "export"
    where: dict[str, Path] = {}

    where["good_ct"] = _series(ex, "good_ct", 1)[0].parent
    mr, _, aff = make_mr_phantom(2, SHAPE, n_lesions=1, spacing=(5.0, 5.0, 8.0))
    (ex / "c_good_mr_nifti").mkdir(parents=True)
    nib.save(nib.Nifti1Image(mr.astype(np.int16), aff), ex / "c_good_mr_nifti" / "t2.nii.gz")
    where["good_mr_nifti"] = ex / "c_good_mr_nifti" / "t2.nii.gz"

    (ex / "c_pipes").mkdir()
    os.mkfifo(ex / "c_pipes" / "IM0001.dcm")  # opening it would block forever
    where["fifo"] = ex / "c_pipes" / "IM0001.dcm"
    os.mkfifo(ex / "c_pipes" / "stream.secret")  # excluded by --exclude '*.secret': never even stat-ed for content
    where["excluded_fifo"] = ex / "c_pipes" / "stream.secret"
    sock, cwd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), os.getcwd()
    try:
        os.chdir(ex / "c_pipes")  # a relative name: socket paths are limited to ~100 bytes
        sock.bind("agent.sock")
    finally:
        os.chdir(cwd)
        sock.close()  # the socket file stays
    where["socket"] = ex / "c_pipes" / "agent.sock"

    folder = str(ex / "c_deep")
    for _ in range(DEPTH):  # deeper than os.walk's recursion allows (os.makedirs would hit it too)
        os.mkdir(folder)
        folder += "/d"
    leaf = Path(folder).parent / "note.txt"
    leaf.write_text("exported by the PACS\n")
    where["deep_tree"] = leaf

    hdr = nib.Nifti1Header()  # a 79-byte-ish .nii.gz that declares 2048x2048x512 int16 voxels
    hdr.set_data_shape((2048, 2048, 512))
    hdr.set_data_dtype(np.int16)
    (ex / "c_huge").mkdir()
    with gzip.open(ex / "c_huge" / "bomb.nii.gz", "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
    where["huge_header_nifti"] = ex / "c_huge" / "bomb.nii.gz"

    vol = mr.astype(np.float32)
    vol[20, 18, 3] = np.nan
    (ex / "c_nan").mkdir()
    nib.save(nib.Nifti1Image(vol, aff), ex / "c_nan" / "flair_float.nii.gz")
    where["nan_voxel_nifti"] = ex / "c_nan" / "flair_float.nii.gz"

    files = _series(ex, "all_inf_dicom", 4)
    _rewrite(files, lambda k, ds: setattr(ds, "RescaleSlope", "1E999"))  # every rescaled value is +inf
    where["all_inf_dicom"] = files[0].parent

    files = _series(ex, "iop_jitter", 5)

    def jitter(k, ds):  # rounding noise of 2e-6 on every other slice (grouping used to split on 4 decimals)
        iop = [float(v) for v in ds.ImageOrientationPatient]
        iop[1] += 2e-6 * (k % 2)
        ds.ImageOrientationPatient = [f"{v:.7f}" for v in iop]

    _rewrite(files, jitter)
    where["iop_jitter"] = files[0].parent

    sag = np.array([[0, 0, 5.0, 0], [-5.0, 0, 0, 0], [0, -5.0, 0, 0], [0, 0, 0, 1]])  # voxel z along R-L: sagittal
    sag[:3, 3] = [0, 100, 90]
    where["single_sagittal"] = _series(ex, "single_sagittal", 6, (40, 36, 1), affine=sag)[0].parent
    cor = np.array([[5.0, 0, 0, 0], [0, 0, 5.0, 0], [0, -5.0, 0, 0], [0, 0, 0, 1]])  # voxel z along A-P: coronal
    where["thin_coronal"] = _series(ex, "thin_coronal", 7, (40, 36, 3), affine=cor)[0].parent

    atlas = np.zeros(SHAPE, np.int16)
    rng = np.random.default_rng(0)
    for label in range(1, 17):
        c = rng.integers(0, SHAPE)
        atlas[max(0, c[0] - 6): c[0] + 6, max(0, c[1] - 6): c[1] + 6, max(0, c[2] - 2): c[2] + 2] = label
    (ex / "c_atlas").mkdir()
    nib.save(nib.Nifti1Image(atlas, aff), ex / "c_atlas" / "parcellation.nii.gz")
    where["atlas16"] = ex / "c_atlas" / "parcellation.nii.gz"

    files = _series(ex, "conflict", 8)
    ds = pydicom.dcmread(files[2])
    arr = ds.pixel_array.copy()
    arr[10:20, 10:20] += 500  # same SOPInstanceUID, other pixels: which copy is right?
    ds.PixelData = arr.tobytes()
    ds.save_as(ex / "c_conflict" / "IM0003_resent.dcm")
    where["conflict"] = files[0].parent
    (ex / "c_zz_copies").mkdir()  # walked after c_good_ct: the second copy
    shutil.copy(where["good_ct"] / "IM0004.dcm", ex / "c_zz_copies" / "IM0004_again.dcm")  # identical second copy
    where["identical_copy"] = ex / "c_zz_copies" / "IM0004_again.dcm"

    files = _series(ex, "deflated", 9)
    _rewrite(files, lambda k, ds: setattr(ds.file_meta, "TransferSyntaxUID", DeflatedExplicitVRLittleEndian))
    where["deflated"] = files[0].parent

    files = _series(ex, "slice_gap", 10)
    files[3].unlink()
    where["slice_gap"] = files[0].parent
    files = _series(ex, "gantry_tilt", 11)
    _rewrite(files, lambda k, ds: setattr(ds, "ImagePositionPatient", [
        float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]) + 2.0 * k,
        float(ds.ImagePositionPatient[2])]))
    where["gantry_tilt"] = files[0].parent
    uids = {k: generate_uid(entropy_srcs=["four_d", k]) for k in ("series", "study", "for")}
    for t, prefix in enumerate("AB"):  # two time points, no tag tells them apart
        hu, _, aff_t = _ct(12 + t)
        write_dicom_series(hu, aff_t, ex / "c_four_d", seed=f"four_d{t}", series_number=12, series_description="four_d",
                           series_uid=uids["series"], study_uid=uids["study"], frame_of_reference_uid=uids["for"],
                           file_prefix=prefix)
    where["four_d"] = ex / "c_four_d"

    files = _series(ex, "no_uid", 13)
    _rewrite(files, lambda k, ds: delattr(ds, "SeriesInstanceUID"))
    where["no_uid"] = files[0].parent
    (ex / "c_singular").mkdir()
    hdr = nib.Nifti1Header()  # the sform maps every voxel to one y: no volume (nibabel would refuse to write it)
    hdr.set_data_shape(SHAPE)
    hdr.set_data_dtype(np.int16)
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [5.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 8.0, 0]
    nib.save(nib.Nifti1Image(mr.astype(np.int16), None, hdr), ex / "c_singular" / "bad.nii.gz")
    where["singular_affine"] = ex / "c_singular" / "bad.nii.gz"
    files = _series(ex, "iop_degenerate", 14)
    _rewrite(files, lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]))
    where["iop_degenerate"] = files[0].parent

    tiny = PYDICOM_FILES / "dicomdirtests" / "TINY_ALPHA" / "PT000000" / "ST000000" / "SE000000"
    (ex / "c_minimal").mkdir()
    for f in sorted(tiny.iterdir())[:3]:
        shutil.copy(f, ex / "c_minimal" / f.name)
    where["pydicom_minimal"] = ex / "c_minimal"

    (ex / "c_empty").mkdir()
    (ex / "c_empty" / "IM0001.dcm").write_bytes(b"")
    where["zero_byte"] = ex / "c_empty" / "IM0001.dcm"
    (ex / "c_links").mkdir()
    (ex / "c_links" / "same_mr").symlink_to(ex / "c_good_mr_nifti", target_is_directory=True)
    where["symlinked_folder"] = ex / "c_links" / "same_mr"
    (ex / "c_links" / "t2_again.nii.gz").symlink_to(where["good_mr_nifti"])
    where["symlinked_file"] = ex / "c_links" / "t2_again.nii.gz"
    (ex / "c_links" / "gone.dcm").symlink_to(ex / "nothing_here.dcm")
    where["broken_link"] = ex / "c_links" / "gone.dcm"

    files = _series(ex, "implicit_vr", 15)
    _rewrite(files, lambda k, ds: setattr(ds.file_meta, "TransferSyntaxUID", ImplicitVRLittleEndian))
    where["implicit_vr"] = files[0].parent

    (ex / "c_other").mkdir()
    _plain_2d(ex / "c_other" / "photo.dcm", SecondaryCaptureImageStorage, "OT", True, "rgb_secondary_capture", 16)
    where["rgb_secondary_capture"] = ex / "c_other" / "photo.dcm"
    _plain_2d(ex / "c_other" / "chest.dcm", DigitalXRayImageStorageForPresentation, "DX", False, "dx_projection", 17)
    where["dx_projection"] = ex / "c_other" / "chest.dcm"
    where["mip_series"] = _series(ex, "mip_series", 18, image_type=("DERIVED", "SECONDARY", "MIP"))[0].parent
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", ex / "DICOMDIR")
    where["dicomdir"] = ex / "DICOMDIR"
    shutil.make_archive(str(ex / "c_other" / "study_backup"), "zip", where["good_ct"])
    where["zip_archive"] = ex / "c_other" / "study_backup.zip"

    hu, _, aff_ct = _ct(19)
    where["blank_series"] = write_dicom_series(np.full(SHAPE, -1000.0), aff_ct, ex / "c_blank_series", seed="blank",
                                               series_number=19, series_description="blank_series")[0].parent
    return where


def remove_deep_tree(export: Path) -> None:
    """Delete the deep folder chain bottom-up without recursion (``shutil.rmtree`` recurses per level)."""
    folder = export / "c_deep"
    if not folder.exists():
        return
    chain = [str(folder)]
    while os.path.isdir(chain[-1] + "/d"):
        chain.append(chain[-1] + "/d")
    for f in reversed(chain):
        for name in os.listdir(f):
            if name != "d":
                os.unlink(os.path.join(f, name))
        os.rmdir(f)
