"""DICOM outputs for anomaly maps, written with highdicom and referencing the source series.

* :func:`write_parametric_map`: float32 Parametric Map (the continuous map; OHIF >= 3.9, Slicer).
* :func:`write_segmentation`: BINARY SEG of a graded label map, one segment per grade (every viewer and PACS shows
  these). Grading (thresholds, grade names) is not decided here: see :mod:`medad.inference.grading`.

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

import numpy as np

from ._atomic import atomic_path
from ._header import dcmread_any
from .writers import _array_affine

__all__ = ["write_parametric_map", "write_segmentation"]

_MANUFACTURER = "medad"
_MODEL = "medad-clip"


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


def write_parametric_map(
    anomaly_map,
    source_files: Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    series_uid: str,
    sop_instance_uid: str,
    series_description: str = "Anomaly map (research use only)",
    series_number: int = 901,
    value_range: tuple[float, float] = (0.0, 1.0),
    lut_label: str = "ANOMALY",
    lut_explanation: str = "Anomaly score (0 normal - 1 abnormal)",
    manufacturer_model_name: str = _MODEL,
) -> Path:
    """Write ``anomaly_map`` as a float32 DICOM Parametric Map referencing ``source_files`` (atomically).

    Args:
        anomaly_map: ``MetaTensor [1, X, Y, Z]`` on the source series' voxel grid (any axis order).
        source_files: the DICOM files of the source series (``volume.meta["source_files"]``), the one multi-frame
            file, or the source volume itself.
        path: output ``.dcm`` path (folder created).
        series_uid, sop_instance_uid: the new object's UIDs (:func:`medad.inference.uids.output_uids`).
        series_description: SeriesDescription shown in viewers.
        series_number: SeriesNumber of the new series.
        value_range: range of the map values (window and real-world value mapping).
        lut_label, lut_explanation: RealWorldValueMapping label/explanation.
        manufacturer_model_name: ManufacturerModelName.

    Returns:
        The written path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets, geom = _read_sources(source_files)
    vol = _matched_volume(anomaly_map, datasets, geom).astype(np.float32)
    _check_uids(series_uid, sop_instance_uid)
    lo, hi = (float(v) for v in value_range)
    pm = hd.pm.ParametricMap(
        source_images=datasets, pixel_array=vol, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=_MANUFACTURER,
        manufacturer_model_name=manufacturer_model_name, software_versions=_version(), device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[hd.pm.RealWorldValueMapping(
            lut_label=lut_label, lut_explanation=lut_explanation, value_range=(lo, hi), unit=codes.UCUM.NoUnits)],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=(lo + hi) / 2,
                                                         window_width=max(hi - lo, 1e-6))],
        content_label=lut_label[:16].upper(),
        content_description=series_description[:64], series_description=series_description)
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
    series_description: str = "Anomaly segmentation (research use only)",
    series_number: int = 902,
    manufacturer_model_name: str = _MODEL,
) -> Path:
    """Write a graded label map as a BINARY DICOM SEG with one non-overlapping segment per value (atomically).

    Segment ``k`` (label ``labels[k-1]``) holds the voxels of value ``k``; reading the file back with
    ``highdicom.seg.segread(path).get_volume(combine_segments=True)`` returns the label map. Grade a continuous
    anomaly map first with :func:`medad.inference.grading.grade`.

    Args:
        label_map: integer (or bool) ``MetaTensor [1, X, Y, Z]`` with values ``0..len(labels)`` on the source
            series' voxel grid (any axis order).
        source_files: the DICOM files of the source series (or the one multi-frame file), or the source volume
            (its ``meta["source_files"]``).
        path: output ``.dcm`` path.
        labels: segment labels in value order, or a ``{label: value}`` dict (``"background"`` ignored).
        series_uid, sop_instance_uid, series_description, series_number, manufacturer_model_name: as for
            :func:`write_parametric_map`.

    Returns:
        The written path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if isinstance(labels, Mapping):  # {"anomaly_low": 1, ...} as in MONAI Label label dicts
        labels = [name for name, _ in sorted(labels.items(), key=lambda kv: kv[1]) if name != "background"]
    labels = list(labels)
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
    algo = hd.AlgorithmIdentificationSequence(name=manufacturer_model_name, version=_version(),
                                              family=codes.cid7162.ArtificialIntelligence)
    descs = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo) for i, name in enumerate(labels, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=graded, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=_MANUFACTURER,
        manufacturer_model_name=manufacturer_model_name, software_versions=_version(), device_serial_number="0",
        series_description=series_description, content_label="ANOMALY")
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)
