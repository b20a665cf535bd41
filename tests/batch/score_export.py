"""A small, deterministic, messy "PACS export" for the ``medad score`` tests (helpers, no tests here).

Layout (``EXPECTED`` lists the status and reason of every file)::

    export/study1/head/IM0001..8.dcm              CT series 1 (explicit VR)          -> scored
    export/study1/mixed/A0001..6, B0001..6.dcm    CT series 2 + MR series 3 in one folder -> scored (2 series)
    export/study1/scout/LOC0001..2.dcm            localizer                          -> skipped: localizer
    export/study1/report_sr.dcm                   Basic Text SR                      -> skipped: non_image
    export/study1/README.txt                      text file                          -> skipped: not_dicom
    export/study2/deep/nested/rle/R0001..6.dcm    CT series 4, RLE Lossless           -> scored
    export/study2/corrupt/C0001..5.dcm            CT series 5, RLE with garbage pixels -> failed: series_load
    export/study2/broken/cut.dcm                  truncated CT slice                 -> failed: truncated
    export/study2/broken/header_only.dcm          CT image without Pixel Data         -> skipped: no_pixel_data
    export/nifti/flair.nii.gz                     MR volume (NIfTI)                  -> scored
    export/nifti/flair_mask.nii.gz                its lesion mask                    -> skipped: label_map
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medad.synthetic import make_ct_phantom, make_mr_phantom
from medad.synthetic.phantoms import write_dicom_series

SHAPE = (40, 36, 8)


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["medad-score-test", *map(str, parts)])


def _ct(seed: int, shape=SHAPE, lesions: int = 1):
    return make_ct_phantom(seed, shape, n_lesions=lesions if shape[2] > 3 else 0, spacing=(5.0, 5.0, 8.0), noise_hu=3.0)


def write_sr(path: Path, study_uid: str) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = _uid("sr")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid("sr-series")
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = "ANON-PHANTOM"
    ds.ValueType = "CONTAINER"
    ds.save_as(path, enforce_file_format=True)


def make_messy_export(root: Path) -> Path:
    """Write the export under ``root/export`` and return that folder."""
    export = root / "export"
    s1, s2 = _uid("study", 1), _uid("study", 2)
    hu, _, aff = _ct(1)
    write_dicom_series(hu, aff, export / "study1/head", seed="head", series_number=1, study_uid=s1,
                       series_description="Head CT")
    hu2, _, aff2 = _ct(2, (40, 36, 6))
    write_dicom_series(hu2, aff2, export / "study1/mixed", seed="mixA", series_number=2, study_uid=s1,
                       series_description="Head CT thin", file_prefix="A")
    mr, _, aff3 = make_mr_phantom(3, (40, 36, 6), n_lesions=1, spacing=(5.0, 5.0, 8.0))
    write_dicom_series(mr, aff3, export / "study1/mixed", seed="mixB", series_number=3, study_uid=s1,
                       modality="MR", series_description="FLAIR", file_prefix="B")
    loc, _, aff4 = _ct(4, (40, 36, 2))
    write_dicom_series(loc, aff4, export / "study1/scout", seed="loc", series_number=99, study_uid=s1,
                       image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_description="Scout",
                       file_prefix="LOC")
    write_sr(export / "study1/report_sr.dcm", s1)
    (export / "study1/README.txt").write_text("exported by the PACS on 2026-01-01\n")

    hu5, _, aff5 = _ct(5, (40, 36, 6))
    write_dicom_series(hu5, aff5, export / "study2/deep/nested/rle", seed="rle", series_number=4, study_uid=s2,
                       transfer_syntax="rle", series_description="Head CT RLE", file_prefix="R")
    hu6, _, aff6 = _ct(6, (40, 36, 5))
    files = write_dicom_series(hu6, aff6, export / "study2/corrupt", seed="bad", series_number=5, study_uid=s2,
                               transfer_syntax="rle", series_description="Corrupt pixels", file_prefix="C")
    ds = pydicom.dcmread(files[2])
    frag = bytearray(ds.PixelData)
    frag[16:64] = b"\xff" * 48   # garbage RLE header / segment offsets inside an intact encapsulation
    ds.PixelData = bytes(frag)
    ds.save_as(files[2], enforce_file_format=True)

    hu7, _, aff7 = _ct(7, (40, 36, 2))
    broken = export / "study2/broken"
    tmp = write_dicom_series(hu7, aff7, root / "scratch", seed="cut", series_number=6, study_uid=s2)
    broken.mkdir(parents=True)
    data = tmp[0].read_bytes()
    (broken / "cut.dcm").write_bytes(data[: len(data) - 900])
    ds = pydicom.dcmread(tmp[1])
    del ds.PixelData
    ds.save_as(broken / "header_only.dcm", enforce_file_format=True)
    shutil.rmtree(root / "scratch")

    mr2, mask2, aff8 = make_mr_phantom(8, (40, 36, 6), n_lesions=1, spacing=(5.0, 5.0, 8.0))
    (export / "nifti").mkdir()
    nib.save(nib.Nifti1Image(mr2.astype(np.int16), aff8), export / "nifti/flair.nii.gz")
    nib.save(nib.Nifti1Image(mask2, aff8), export / "nifti/flair_mask.nii.gz")
    return export


#: relative path (glob-free prefix) -> (status, reason)
EXPECTED = {
    "study1/head/": ("scored", ""),
    "study1/mixed/A": ("scored", ""),
    "study1/mixed/B": ("scored", ""),
    "study1/scout/": ("skipped", "localizer"),
    "study1/report_sr.dcm": ("skipped", "non_image"),
    "study1/README.txt": ("skipped", "not_dicom"),
    "study2/deep/nested/rle/": ("scored", ""),
    "study2/corrupt/": ("failed", "series_load"),
    "study2/broken/cut.dcm": ("failed", "truncated"),
    "study2/broken/header_only.dcm": ("skipped", "no_pixel_data"),
    "nifti/flair.nii.gz": ("scored", ""),
    "nifti/flair_mask.nii.gz": ("skipped", "label_map"),
}

N_FILES = 39
N_SERIES = 7      # loadable: 5 scored, 1 failed (corrupt pixels), 1 skipped (label map)
#: rows of results.csv: every series found, loadable or not: (status, reason code at the start of the error column)
ROWS = sorted([("ok", "")] * 5 + [("failed", "SeriesLoadError"), ("skipped", "label_map"), ("skipped", "localizer"),
                                  ("skipped", "non_image"), ("failed", "truncated"), ("skipped", "no_pixel_data")])


def expected_for(rel: str) -> tuple[str, str]:
    for prefix, v in EXPECTED.items():
        if rel.startswith(prefix):
            return v
    raise KeyError(rel)
