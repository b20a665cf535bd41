"""Write a volume as a realistic single-frame DICOM series (CT or MR), deterministically.

Used for the sample data and for tests of :mod:`medad.io` (orientation, ordering, compression). All UIDs are derived
from ``seed`` and the role of the UID (study/series/frame of reference/instance), so a rerun gives identical files.
No real person is named: PatientName ``PHANTOM^SYNTHETIC``, PatientID ``ANON-PHANTOM`` by default.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from ..io.readers import lps_ras

__all__ = ["TRANSFER_SYNTAXES", "series_uids", "write_dicom_series"]

#: Short names accepted by ``write_dicom_series(transfer_syntax=...)``.
TRANSFER_SYNTAXES = {
    None: ExplicitVRLittleEndian,
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}


def _uid(seed: int | str, *parts) -> str:
    return generate_uid(entropy_srcs=["medad-phantom", str(seed), *map(str, parts)])


def series_uids(seed: int | str, series_number: int = 1) -> dict[str, str]:
    """The deterministic study / series / frame-of-reference UIDs used by :func:`write_dicom_series`."""
    return {
        "study": _uid(seed, "study"),
        "series": _uid(seed, "series", series_number),
        "frame_of_reference": _uid(seed, "for"),
    }


def _ds(x: float) -> str:
    """Decimal String with full precision in at most 16 characters."""
    return pydicom.valuerep.format_number_as_ds(float(x))


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    seed: int | str = 0,
    modality: str = "CT",
    series_number: int = 1,
    series_description: str = "Synthetic phantom",
    study_description: str = "medad phantom",
    body_part: str = "HEAD",
    patient_id: str = "ANON-PHANTOM",
    patient_name: str = "PHANTOM^SYNTHETIC",
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    transfer_syntax: str | None = None,
    descending_instance_numbers: bool = False,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    acquisition_number: int = 1,
    file_prefix: str = "IM",
) -> list[Path]:
    """Write ``volume [X, Y, Z]`` as one DICOM file per slice ``k`` (``pixel rows = Y``, ``columns = X``).

    Geometry comes from the voxel->RAS ``affine`` (converted to DICOM's LPS): ImageOrientationPatient from the first
    two columns, PixelSpacing from their norms, ImagePositionPatient of slice ``k`` = ``affine @ [0, 0, k, 1]``.
    Any rotation/flip works; the slice axis must be perpendicular to the image plane (no gantry tilt).

    Args:
        volume: ``[X, Y, Z]`` real-world values (HU for CT); stored as ``round((v - intercept) / slope)``.
        affine: ``[4, 4]`` voxel->RAS.
        out_dir: folder, created if needed. Files are ``{file_prefix}{k+1:04d}.dcm``.
        seed: seeds the UIDs (same seed, same UIDs).
        modality: ``"CT"`` (CT Image Storage) or ``"MR"`` (MR Image Storage).
        rescale: ``(slope, intercept)``; default ``(1, -1024)`` for CT, ``(1, 0)`` for MR.
        window: ``(center, width)``; default brain window ``(40, 80)`` for CT, data percentiles for MR.
        transfer_syntax: ``None``/``"explicit"``, ``"rle"``, ``"jpegls"`` or ``"jpeg2000"`` (all lossless).
        descending_instance_numbers: number the slices from the top (InstanceNumber decreases with ``k``).
        image_type: ImageType value, e.g. ``("ORIGINAL", "PRIMARY", "LOCALIZER")`` to mimic a scout.
        acquisition_number: AcquisitionNumber of every slice.

    Returns:
        The written paths, in slice order ``k = 0..Z-1``.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(k for k in TRANSFER_SYNTAXES if k)} or None")
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"volume must be [X, Y, Z], got shape {volume.shape}")
    lps = lps_ras(affine)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    sx, sy, sz = (float(np.linalg.norm(v)) for v in (col_step, row_step, slice_step))
    normal = np.cross(col_step / sx, row_step / sy)
    if abs(abs(float(normal @ slice_step)) / sz - 1.0) > 1e-6:
        raise ValueError("affine: the slice axis is not perpendicular to the image plane (gantry tilt not supported)")
    slope, intercept = rescale or ((1.0, -1024.0) if modality == "CT" else (1.0, 0.0))
    stored = np.round((volume.astype(np.float64) - intercept) / slope)
    signed = stored.min() < 0
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    if stored.min() < lo or stored.max() > hi:
        raise ValueError(f"values {volume.min()}..{volume.max()} do not fit 16 bits with slope/intercept {rescale}")
    stored = stored.astype(np.int16 if signed else np.uint16)
    if window is None:
        window = (40.0, 80.0) if modality == "CT" else (
            float(np.percentile(volume, 99.5) / 2), float(np.percentile(volume, 99.5)))
    uids = series_uids(seed, series_number)
    study_uid = study_uid or uids["study"]
    series_uid = series_uid or uids["series"]
    for_uid = frame_of_reference_uid or uids["frame_of_reference"]
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = volume.shape[2]
    paths = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "sop", series_uid, k)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = list(image_type)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20260101"
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = modality
        ds.Manufacturer = "medad synthetic phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = body_part
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.PatientPosition = "HFS"
        if modality == "CT":
            ds.KVP = "120"
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.ScanningSequence = "SE\\IR"
            ds.SequenceVariant = "SK"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "9000"
            ds.EchoTime = "90"
            ds.InversionTime = "2500"
            ds.EchoTrainLength = "16"
            ds.MagneticFieldStrength = "3"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.AcquisitionNumber = acquisition_number
        ds.InstanceNumber = (n - k) if descending_instance_numbers else (k + 1)
        ipp = lps[:3, 3] + k * slice_step
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([col_step / sx, row_step / sy])]
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = _ds(float(normal @ ipp))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]  # row spacing (between rows), column spacing
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = int(signed)
        ds.WindowCenter = _ds(window[0])
        ds.WindowWidth = _ds(window[1])
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        if modality == "CT":
            ds.RescaleType = "HU"
        pixels = np.ascontiguousarray(stored[:, :, k].T)
        ds.PixelData = pixels.tobytes()
        if transfer_syntax not in (None, "explicit"):
            ds.compress(TRANSFER_SYNTAXES[transfer_syntax], pixels, generate_instance_uid=False)
        path = out / f"{file_prefix}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
