"""DICOM outputs for anomaly maps, written with highdicom and referencing the source series.

* :func:`write_parametric_map`: Parametric Map of the continuous map, float32 (OHIF >= 3.9, Slicer) or 16-bit
  integer (``integer=True``: stored ``round(score * 65535)`` with a Real World Value Mapping back to the [0, 1] score,
  for PACS and viewers that cannot show float pixels, e.g. Orthanc's preview).
* :func:`write_segmentation`: BINARY SEG of a graded label map, one segment per grade (every viewer and PACS shows
  these), each segment described by its score range, coded as an abnormal finding (not a lesion) and given its
  display colour. Grading (thresholds, grade names, colours) is not decided here: see
  :mod:`medad.inference.grading`.

Both copy from the source what their IODs expect beyond highdicom's patient/study modules (BodyPartExamined,
Laterality when known, PatientPosition, ...: :data:`COPIED_FROM_SOURCE`) and carry the provenance in standard
places (:func:`provenance_attributes`): SoftwareVersions, a DeviceSerialNumber derived from the model digest,
ContentDescription, a Contributing Equipment item (processing equipment) whose ContributionDescription lists the
provenance fields, and in the SEG the Algorithm Identification of every segment (name, version, parameters).

The map is a ``MetaTensor [1, X, Y, Z]`` (or ``[X, Y, Z]``) whose RAS ``affine`` describes the same voxel grid as the
source series, in any axis order/flip (e.g. after ``Orientationd(RAS)``): it is matched onto the source frames with
``highdicom.Volume(..., from_reference_convention="RAS").match_geometry(source)``, never resampled. A map on another
grid raises an error: invert the preprocessing (``Invertd``) first.

The Series and SOP Instance UIDs are always given by the caller: the UID policy lives in :mod:`medad.inference.uids`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ._atomic import atomic_path
from ._header import dcmread_any
from .writers import _array_affine

__all__ = ["COPIED_FROM_SOURCE", "INTEGER_PM_MAX", "provenance_attributes", "write_parametric_map",
           "write_segmentation"]

_MANUFACTURER = "medad"
_MODEL = "medad-clip"
#: Stored value of score 1.0 in the integer Parametric Map (score = stored / INTEGER_PM_MAX).
INTEGER_PM_MAX = 65535
#: Attributes copied from the first source instance when present (General Series, General Equipment, ...).
COPIED_FROM_SOURCE = ("BodyPartExamined", "Laterality", "PatientPosition", "StudyID", "AccessionNumber",
                      "ReferringPhysicianName", "PatientAge", "PatientSex", "PatientSize", "PatientWeight",
                      "InstitutionName", "InstitutionalDepartmentName")
#: BodyPartExamined values of paired structures: Laterality (type 2C) must be present, empty when unknown.
_PAIRED = {"BREAST", "EAR", "EYE", "ORBIT", "KIDNEY", "LUNG", "HIP", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST",
           "ELBOW", "SHOULDER", "ARM", "LEG", "UPPEREXTREMITY", "LOWEREXTREMITY", "CLAVICLE", "SCAPULA", "FEMUR",
           "TIBIA", "FIBULA", "HUMERUS", "RADIUS", "ULNA", "FOREARM", "THIGH", "ADRENAL", "OVARY", "TESTIS",
           "PAROTID", "SUBMANDIBULAR", "AXILLA", "HEEL", "TOE", "FINGER", "THUMB", "CALCANEUS"}


def _version() -> str:
    try:
        from medad import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "0"


def _source_paths(source_files) -> list[str]:
    """``source_files`` as paths: a sequence of paths, one path, or a volume whose ``meta["source_files"]`` lists them."""
    meta = getattr(source_files, "meta", None)
    if meta is not None:
        source_files = meta.get("source_files") or []
    if isinstance(source_files, (str, os.PathLike)):
        source_files = [source_files]
    return [str(f) for f in source_files]


def _read_sources(source_files):
    """Headers of the source instances and the highdicom geometry of the source volume."""
    import highdicom as hd

    files = _source_paths(source_files)
    if not files:
        raise ValueError("source_files is empty: pass the DICOM files of the series the map was computed on "
                         "(volume.meta['source_files'])")
    datasets = [dcmread_any(f, stop_before_pixels=True) for f in files]
    if not all(ds.get("FrameOfReferenceUID") for ds in datasets):
        raise ValueError(f"source series in {os.path.dirname(files[0])} has no FrameOfReferenceUID, so a DICOM "
                         "Parametric Map/SEG cannot be aligned to it; write the map as NIfTI instead (save_nifti)")
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        geom = hd.imread(files[0], lazy_frame_retrieval=True).get_volume_geometry()
        if geom is None:
            raise ValueError(f"{files[0]}: multi-frame source is not a regular 3D volume")
        return datasets, geom
    ds0 = datasets[0]
    for ds in datasets[1:]:  # highdicom wants identical values; rounding noise between slices is harmless
        for kw, tol in (("ImageOrientationPatient", 1e-4), ("PixelSpacing", 1e-4)):
            a, b = ds.get(kw), ds0.get(kw)
            if a is not None and b is not None and a != b and np.allclose(np.asarray(a, float), np.asarray(b, float),
                                                                          atol=tol, rtol=0):
                setattr(ds, kw, b)
    if len(datasets) == 1:
        spacing, order = float(ds0.get("SpacingBetweenSlices", 1.0) or 1.0), [0]  # as get_volume_from_series
    else:
        spacing, positions = hd.spatial.get_series_volume_positions(datasets, orientation_tol=1e-4)
        if spacing is None:
            raise ValueError(f"source series in {os.path.dirname(files[0])} is not a regularly spaced volume")
        order = [positions.index(i) for i in range(len(datasets))]
    first = datasets[order[0]]
    geom = hd.VolumeGeometry.from_attributes(
        image_position=first.ImagePositionPatient, image_orientation=ds0.ImageOrientationPatient,
        rows=int(ds0.Rows), columns=int(ds0.Columns), pixel_spacing=ds0.PixelSpacing,
        spacing_between_slices=spacing, number_of_frames=len(datasets), coordinate_system="PATIENT",
        frame_of_reference_uid=ds0.FrameOfReferenceUID)
    return datasets, geom


def _matched_volume(anomaly_map, datasets, geom):
    import highdicom as hd

    arr, affine = _array_affine(anomaly_map, "anomaly map")
    vol = hd.Volume(array=arr, affine=affine, coordinate_system="PATIENT",
                    frame_of_reference_uid=datasets[0].FrameOfReferenceUID, from_reference_convention="RAS")
    try:
        return vol.match_geometry(geom)
    except RuntimeError as e:
        raise ValueError(
            f"the anomaly map (shape {arr.shape}) is not on the voxel grid of its source series (spatial shape "
            f"{geom.spatial_shape} as slices/rows/columns): resample it back to the source grid (e.g. monai Invertd) "
            f"before writing DICOM. highdicom: {e}") from e


def _short(v: Any, n: int = 16) -> str:
    return str(v or "")[:n] or "-"


def provenance_attributes(provenance: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The DICOM fields that carry a :func:`medad.inference.provenance.provenance` dict (empty dict: unknown model).

    Returns ``{"model_name", "software_versions", "device_serial_number", "content_description",
    "contribution_description", "algorithm_parameters"}``: ManufacturerModelName (``medad-clip <backbone>``),
    SoftwareVersions (medad version, adapters and backbone digests, 16 hex each), DeviceSerialNumber (the first 32 hex
    of the model digest: another model, another serial), ContentDescription (what the values mean and the operating
    point, 64 characters), ContributionDescription (every provenance field, <= 1024 characters) and the
    AlgorithmParameters of the SEG's Algorithm Identification (name=value pairs).
    """
    prov = dict(provenance or {})
    version = str(prov.get("medad") or _version())
    op = prov.get("operating_point") or None
    if op and op.get("by_modality"):
        content = f"calibrated anomaly score; flag per modality (spec {op['specificity']:g})"
    elif op:
        content = f"anomaly score; flag above {op['operating_point']:.4f} (spec {op['specificity']:g})"
    else:
        content = "anomaly score 0-1 (uncalibrated)"
    params = {
        "medad": version, "backbone": prov.get("backbone", ""), "backbone_sha256": prov.get("backbone_sha256", ""),
        "adapters_sha256": prov.get("adapters_sha256", ""), "model_sha256": prov.get("model_sha256", ""),
        "protocol": prov.get("protocol", ""), "object_name": prov.get("object_name", ""),
        "intensity": prov.get("intensity", ""), "normalize_input": prov.get("normalize_input", ""),
        "view": prov.get("view", ""), "axis": prov.get("axis", ""), "top_k": prov.get("top_k", ""),
        "volume_score": prov.get("volume_score", ""), "precision": prov.get("precision", ""),
        "thresholds": "/".join(f"{float(t):g}" for t in prov.get("thresholds") or []),
    }
    if op:
        params.update(specificity=op["specificity"], threshold_raw=f"{op['threshold_raw']:.6g}",
                      operating_point=op["operating_point"], calibration_n=op["n_studies"],
                      fpr_bound=op["fpr_bound"])
        for mod, g in (op.get("by_modality") or {}).items():
            params[f"threshold_raw_{mod}"] = f"{g['threshold_raw']:.6g}"
            params[f"calibration_n_{mod}"] = g["n_studies"]
    else:
        params["operating_point"] = "none"
    text = ", ".join(f"{k}={v}" for k, v in params.items() if v != "")
    return {
        "model_name": f"{_MODEL} {prov.get('backbone', '')}".strip()[:64],
        "software_versions": [f"medad {version}"[:64], f"adapters {_short(prov.get('adapters_sha256'))}",
                              f"backbone {_short(prov.get('backbone_sha256'))}"],
        "device_serial_number": _short(prov.get("model_sha256"), 32),
        "content_description": content[:64],
        "contribution_description": ("medad anomaly detection: " + text)[:1024],
        "algorithm_parameters": {k: str(v) for k, v in params.items() if v != ""},
    }


def _copy_source_attributes(out, source, laterality: bool) -> None:
    """Copy :data:`COPIED_FROM_SOURCE` from the first source instance into ``out`` (where absent).

    With ``laterality`` (the Parametric Map, whose General Series module needs the type-2C Laterality unless
    BodyPartExamined names an unpaired part): the source's Laterality, else its ImageLaterality (L/R), else empty
    when the body part is paired or unknown. Without (the SEG: dciodvfy rejects a series Laterality there, the
    condition is never met for SEG) no Laterality at all."""
    for kw in COPIED_FROM_SOURCE:
        value = source.get(kw)
        if value not in (None, "") and kw not in out and (kw != "Laterality" or laterality):
            setattr(out, kw, value)
    if laterality and "Laterality" not in out:
        lat = str(source.get("ImageLaterality", "") or "")
        part = str(source.get("BodyPartExamined", "") or "").upper().replace(" ", "")
        if lat in ("L", "R"):
            out.Laterality = lat
        elif not part or part in _PAIRED:
            out.Laterality = ""


def _equipment(attrs: Mapping[str, Any]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.ContributingEquipment(
        manufacturer=_MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=attrs["model_name"], software_versions=attrs["software_versions"],
        device_serial_number=attrs["device_serial_number"],
        contribution_description=attrs["contribution_description"])]


def write_parametric_map(
    anomaly_map,
    source_files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    series_uid: str,
    sop_instance_uid: str,
    provenance: Optional[Mapping[str, Any]] = None,
    integer: bool = False,
    series_description: Optional[str] = None,
    series_number: Optional[int] = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    lut_label: str = "ANOMALY",
    lut_explanation: str = "Anomaly score (0 normal - 1 abnormal)",
) -> Path:
    """Write ``anomaly_map`` as a DICOM Parametric Map referencing ``source_files`` (atomically).

    Args:
        anomaly_map: ``MetaTensor [1, X, Y, Z]`` on the source series' voxel grid (any axis order).
        source_files: the DICOM files of the source series (``volume.meta["source_files"]``), the one multi-frame
            file, or the source volume itself.
        path: output ``.dcm`` path (folder created).
        series_uid, sop_instance_uid: the new object's UIDs (:func:`medad.inference.uids.output_uids`).
        provenance: :func:`medad.inference.provenance.provenance` fields (see :func:`provenance_attributes`).
        integer: store 16-bit unsigned integers ``round((v - lo) / (hi - lo) * 65535)`` with a Real World Value
            Mapping (slope ``(hi - lo) / 65535``, intercept ``lo``) back to the score, instead of float32.
        series_description: SeriesDescription (default says float or integer); series_number: default 901 (float),
            903 (integer).
        value_range: range of the map values (clipped to it for ``integer``; window and value mapping).
        lut_label, lut_explanation: RealWorldValueMapping label/explanation.

    Returns:
        The written path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets, geom = _read_sources(source_files)
    _check_uids(series_uid, sop_instance_uid)
    lo, hi = (float(v) for v in value_range)
    vol = _matched_volume(anomaly_map, datasets, geom)
    attrs = provenance_attributes(provenance)
    if integer:
        scaled = np.rint((np.clip(vol.array.astype(np.float64), lo, hi) - lo) / (hi - lo) * INTEGER_PM_MAX)
        vol = vol.with_array(scaled.astype(np.uint16))
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=lut_label, lut_explanation=lut_explanation, value_range=(0, INTEGER_PM_MAX),
            slope=(hi - lo) / INTEGER_PM_MAX, intercept=lo, unit=codes.UCUM.NoUnits)
        window = hd.VOILUTTransformation(window_center=INTEGER_PM_MAX / 2, window_width=INTEGER_PM_MAX)
        description = series_description or "Anomaly map, integer (research use only)"
        number = 903 if series_number is None else series_number
    else:
        vol = vol.astype(np.float32)
        mapping = hd.pm.RealWorldValueMapping(lut_label=lut_label, lut_explanation=lut_explanation,
                                              value_range=(lo, hi), unit=codes.UCUM.NoUnits)
        window = hd.VOILUTTransformation(window_center=(lo + hi) / 2, window_width=max(hi - lo, 1e-6))
        description = series_description or "Anomaly map (research use only)"
        number = 901 if series_number is None else series_number
    pm = hd.pm.ParametricMap(
        source_images=datasets, pixel_array=vol, series_instance_uid=series_uid, series_number=number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=_MANUFACTURER,
        manufacturer_model_name=attrs["model_name"], software_versions=list(attrs["software_versions"]),
        device_serial_number=attrs["device_serial_number"], contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping], voi_lut_transformations=[window], content_label=lut_label[:16].upper(),
        content_description=attrs["content_description"], series_description=description[:64],
        contributing_equipment=_equipment(attrs))
    _copy_source_attributes(pm, datasets[0], laterality=True)
    with atomic_path(path) as tmp:
        pm.save_as(tmp, enforce_file_format=True)
    return Path(path)


def _check_uids(series_uid: str, sop_instance_uid: str) -> None:
    if not series_uid or not sop_instance_uid:
        raise ValueError("series_uid and sop_instance_uid are required (see medad.inference.uids for the UID policy)")


def write_segmentation(
    label_map,
    source_files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    labels: Sequence[str] | Mapping[str, int],
    series_uid: str,
    sop_instance_uid: str,
    thresholds: Optional[Sequence[float]] = None,
    colors: Optional[Sequence[tuple[int, int, int]]] = None,
    provenance: Optional[Mapping[str, Any]] = None,
    series_description: str = "Anomaly segmentation (research use only)",
    series_number: int = 902,
) -> Path:
    """Write a graded label map as a BINARY DICOM SEG with one non-overlapping segment per value (atomically).

    Segment ``k`` (label ``labels[k-1]``) holds the voxels of value ``k``; reading the file back with
    ``highdicom.seg.segread(path).get_volume(combine_segments=True)`` returns the label map. Grade a continuous
    anomaly map first with :func:`medad.inference.grading.grade`.

    Every segment is coded as category "Finding" (SCT 404684003), type "Abnormal" (SCT 263654008): a region whose
    anomaly score is in the segment's range, not a lesion claim; its SegmentDescription gives that range
    (``thresholds[k-1] <= score < thresholds[k]``).

    Args:
        label_map: integer (or bool) ``MetaTensor [1, X, Y, Z]`` with values ``0..len(labels)`` on the source
            series' voxel grid (any axis order).
        source_files: the DICOM files of the source series (or the one multi-frame file), or the source volume
            (its ``meta["source_files"]``).
        path: output ``.dcm`` path.
        labels: segment labels in value order, or a ``{label: value}`` dict (``"background"`` ignored).
        series_uid, sop_instance_uid: the new object's UIDs.
        thresholds: the grading thresholds (one per label) the label map was made with: recorded in the segment
            descriptions and the algorithm parameters.
        colors: RecommendedDisplayCIELabValue of each segment (DICOM-scaled CIELab, one per label), e.g.
            ``[c.cielab for c in medad.inference.grading.grade_colors(len(labels))]``.
        provenance: provenance fields (see :func:`provenance_attributes`).
        series_description, series_number: of the new series.

    Returns:
        The written path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if isinstance(labels, Mapping):  # {"anomaly_low": 1, ...} as in MONAI Label label dicts
        labels = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1]) if name != "background"]
    labels = list(labels)
    t = [float(v) for v in thresholds] if thresholds is not None else None
    if t is not None and len(t) != len(labels):
        raise ValueError(f"need one threshold per label, got {len(t)} thresholds for {len(labels)} labels")
    if colors is not None and len(colors) != len(labels):
        raise ValueError(f"need one colour per label, got {len(colors)} colours for {len(labels)} labels")
    _check_uids(series_uid, sop_instance_uid)
    datasets, geom = _read_sources(source_files)
    vol = _matched_volume(label_map, datasets, geom)
    if not (np.issubdtype(vol.array.dtype, np.integer) or vol.array.dtype == bool):
        raise ValueError(f"write_segmentation takes a graded integer label map, got {vol.array.dtype} values: grade "
                         "the anomaly map first (medad.inference.grading.grade)")
    graded_arr = vol.array.astype(np.uint8)
    if graded_arr.max(initial=0) > len(labels):
        raise ValueError(f"label map holds value {graded_arr.max()} but only {len(labels)} labels were given")
    graded = vol.with_array(graded_arr)
    attrs = provenance_attributes(provenance)
    params = dict(attrs["algorithm_parameters"])
    if t is not None:
        params["thresholds"] = "/".join(f"{v:g}" for v in t)
    algo = hd.AlgorithmIdentificationSequence(name=_MODEL, version=str(params.get("medad", _version())),
                                              family=codes.cid7162.ArtificialIntelligence, source=_MANUFACTURER,
                                              parameters=params)
    descs = []
    for i, name in enumerate(labels, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=i, segment_label=name[:64], segmented_property_category=codes.SCT.Finding,
            segmented_property_type=codes.SCT.Abnormal, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            display_color=None if colors is None else hd.color.CIELabColor.from_dicom_value(tuple(colors[i - 1])))
        if t is not None:
            rng = f"{t[i - 1]:g} <= score < {t[i]:g}" if i < len(t) else f"score >= {t[i - 1]:g}"
            d.SegmentDescription = f"anomaly {rng} (not a diagnosis)"[:64]
        descs.append(d)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=graded, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=_MANUFACTURER,
        manufacturer_model_name=attrs["model_name"], software_versions=list(attrs["software_versions"]),
        device_serial_number=attrs["device_serial_number"], series_description=series_description[:64],
        content_label="ANOMALY", content_description=attrs["content_description"],
        contributing_equipment=_equipment(attrs))
    _copy_source_attributes(seg, datasets[0], laterality=False)
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)
