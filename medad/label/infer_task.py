"""The ``anomaly`` infer task: a volume in, a graded uint8 label map + scores out (MONAI Label ``BasicInferTask``).

3D Slicer and OHIF load MONAI Label results as *label maps* (they force ``.nrrd``/``uint8``), so the continuous
anomaly map of :class:`medad.inference.VolumeRunner` is quantised with the detector's three thresholds (stored
with the adapters, overridable by ``--conf thresholds`` or per request) into ``anomaly_low=1``, ``anomaly_mid=2``,
``anomaly_high=3`` (0 = below the first threshold). The continuous map travels separately:

- as a float32 NIfTI saved in the datastore under the label tag ``anomaly_map``
  (``GET /datastore/label?label=<image id>&tag=anomaly_map``);
- for DICOM inputs, as a DICOM Parametric Map + a BINARY SEG and, with a DICOMweb datastore, stored to the PACS
  (STOW-RS), so OHIF/PACS viewers show them next to the series.

The map, PM and SEG are written by :func:`medad.inference.write_outputs` with its grading, UID policy and provenance,
exactly as ``medad score`` and the bundle write them. The result JSON (``output=json``/``all``) holds
``volume_score``, ``top_slices``, ``slice_scores`` (one per slice along the runner's slice axis), ``thresholds``,
``label_voxels``, ``grading`` (:func:`medad.inference.grading_summary`), ``provenance``
(:func:`medad.inference.provenance`) and what was saved where.

For the reviewer (:mod:`medad.label.review`): ``summary`` (one sentence: volume score, most anomalous slice with a
1-based number, labelled voxels), ``top_slice_numbers`` (1-based, as the viewers count; ``top_slices`` are 0-based
indices), ``legend`` and ``label_colors`` (the heat ramp and thresholds), ``viewer`` (``slicer_overlay``: the line
to paste into 3D Slicer's Python console to see the continuous map; for DICOM series ``ohif``: the OHIF path opening
the study at the most anomalous slice, and ``top_slice_instances``). The returned ``.nrrd`` label map carries the
grade names and colours as 3D Slicer segmentation metadata and is named ``*.seg.nrrd``.

Per-request ``params`` (all optional): ``thresholds`` (3 increasing numbers in [0, 1]), ``top_k`` (int >= 1),
``write_dicom`` (bool), ``save_anomaly_map`` (bool), plus MONAI Label's ``result_extension``/``result_dtype``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from ..inference import GRADE_LABELS, OutputOptions, grade, grading_summary, write_outputs
from ..io.dicom_index import IMAGE_FILE_SUFFIXES
from .config import LABELS, ConfigError, LabelConfig, parse_thresholds
from .review import label_colors, legend, ohif_viewer_path, seg_nrrd_metadata, slice_summary, top_slice_instances
from .server.errors import BadRequest, NotFound
from .store import DetectorStore

__all__ = ["AnomalyInferTask", "ANOMALY_MAP_TAG", "reference_geometry", "to_reference_grid"]

logger = logging.getLogger(__name__)

#: Datastore label tag under which the continuous float32 map is saved.
ANOMALY_MAP_TAG = "anomaly_map"


# ---------------------------------------------------------------------------------------------------------- helpers
def reference_geometry(path: str) -> Optional[tuple[tuple[int, ...], np.ndarray]]:
    """``(size (X, Y, Z), RAS affine [4, 4])`` of the image file MONAI Label serves for ``path``; None for folders.

    The label returned to a viewer must sit on the voxel grid of that file (OHIF maps label voxels onto the image
    voxels one to one), whatever orientation the runner worked in.
    """
    from medad.io import read_image_geometry

    return read_image_geometry(path) if os.path.isfile(path) else None


def to_reference_grid(volume: MetaTensor, size: Sequence[int], affine: np.ndarray, what: str) -> MetaTensor:
    """Permute/flip a ``[C, X, Y, Z]`` MetaTensor onto the grid ``(size, affine)`` of the reference image.

    Only axis permutations and flips are applied (exact, no resampling); a map already on that grid is returned as
    it is. Raises :class:`RuntimeError` naming
    ``what`` when the grids differ by more than that.
    """
    import nibabel as nib
    from monai.transforms import Orientation

    if tuple(volume.shape[1:]) == tuple(size) and np.allclose(np.asarray(volume.affine, dtype=np.float64), affine,
                                                             atol=1e-3):
        return volume  # already on the grid: the map goes out unchanged (the same bytes as medad score writes)
    axcodes = "".join(nib.aff2axcodes(affine))
    out = Orientation(axcodes=axcodes)(volume)
    got = np.asarray(out.affine, dtype=np.float64)
    if tuple(out.shape[1:]) != tuple(size) or not np.allclose(got, affine, atol=1e-3):
        raise RuntimeError(f"{what}: the anomaly map grid {tuple(out.shape[1:])} / affine {got.round(3).tolist()} "
                           f"does not match the input image {tuple(size)} / {affine.round(3).tolist()}; "
                           "the volume runner changed the geometry.")
    return out


#: Label file types the viewers and SimpleITK handle (3D Slicer and OHIF ask for ".nrrd"): medad's single-file volume
#: formats (not the header + data pairs .nhdr/.mhd) and Slicer's ".seg.nrrd".
_LABEL_EXTENSIONS = (*(s for s in IMAGE_FILE_SUFFIXES if s not in (".nhdr", ".mhd")), ".seg.nrrd")


def label_format(data: dict[str, Any]) -> tuple[str, np.dtype]:
    """``(extension, dtype)`` of the label file for a request: ``result_extension`` (else the input's, else
    ``.nrrd``) and ``result_dtype`` (else uint8), as MONAI Label's ``Writer`` picks them; bad values -> 400."""
    from monailabel.utils.others.generic import file_ext

    ext = data.get("result_extension") or file_ext(data.get("image") or "") or ".nrrd"
    ext = str(ext) if str(ext).startswith(".") else f".{ext}"
    if ext.lower() not in _LABEL_EXTENSIONS:
        raise BadRequest(f"params.result_extension={ext!r}: the label map can be written as one of "
                         f"{', '.join(_LABEL_EXTENSIONS)}.")
    name = data.get("result_dtype") or "uint8"
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise BadRequest(f"params.result_dtype={name!r}: not a numpy dtype (use uint8).") from None
    if dtype.kind not in "ui":
        raise BadRequest(f"params.result_dtype={name!r}: a label map needs an integer type such as uint8.")
    return ext, dtype


def write_label(label: MetaTensor, extension: str, dtype: np.dtype, compress: bool = False,
                metadata: Optional[dict[str, str]] = None) -> str:
    """Write the label map ``[X, Y, Z]`` (RAS affine) to a new temporary ``*<extension>`` file; returns its path.

    Written with :func:`medad.io.save_itk_image` (SimpleITK, LPS) like MONAI Label's ``Writer``; ``metadata`` are
    extra header fields (NRRD ``key:=value``), e.g. :func:`medad.label.review.seg_nrrd_metadata`.
    """
    from medad.io import save_itk_image

    fd, path = tempfile.mkstemp(suffix=extension, prefix="medad_label_")
    os.close(fd)
    save_itk_image(label, path, dtype=dtype, compress=compress)
    if metadata:
        import SimpleITK as sitk

        img = sitk.ReadImage(path)
        for key, value in metadata.items():
            img.SetMetaData(key, value)
        sitk.WriteImage(img, path, bool(compress))
    return path


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise BadRequest(f"params.{key}={value!r}: expected true or false.")


# ---------------------------------------------------------------------------------------------------------- task
class AnomalyInferTask(BasicInferTask):
    """MONAI Label infer task over :class:`medad.inference.VolumeRunner`.

    Args:
        store: the app's :class:`~medad.label.store.DetectorStore` (shared with the train task).
        config: the app options.
        datastore: callable returning the app's datastore (used to save the continuous map), or None.
        dicomweb_url: DICOMweb root of the datastore (e.g. ``http://127.0.0.1:8042/dicom-web``) to STOW the
            Parametric Map and SEG to, or None (they are then only written, not stored).
    """

    def __init__(self, store: DetectorStore, config: LabelConfig, datastore: Optional[Callable[[], Any]] = None,
                 dicomweb_url: Optional[str] = None,
                 description: str = "MVFA/CLIP anomaly map, graded into anomaly_low/mid/high (research use)") -> None:
        super().__init__(path=None, network=None, type=InferType.SEGMENTATION, labels=dict(LABELS), dimension=3,
                         description=description,
                         config={"top_k": config.top_k, "write_dicom": config.write_dicom, "save_anomaly_map": True})
        self.store = store
        self.app_config = config
        self.datastore = datastore
        self.dicomweb_url = dicomweb_url

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        info = super().info()
        try:
            info["medad"] = self.store.info()
        except Exception as e:  # noqa: BLE001 - /info must answer even when the model cannot load
            info["medad"] = {"error": f"{type(e).__name__}: {e}"}
        info["label_colors"] = label_colors(GRADE_LABELS)
        info["legend"] = legend(self.store.thresholds(), GRADE_LABELS)
        return info

    # ------------------------------------------------------------------ request checks
    def _check_request(self, data: dict[str, Any]) -> dict[str, Any]:
        image = data.get("image")
        if not isinstance(image, str) or not image or not os.path.exists(image):
            raise NotFound("The image to score does not exist. Pass ?image=<id> with an id from "
                           "/datastore/?output=all (or the SeriesInstanceUID for a DICOMweb datastore).")
        det, _ = self.store.get()
        thresholds = data.get("thresholds")
        try:
            data["thresholds"] = parse_thresholds(thresholds, "params.thresholds") if thresholds is not None \
                else tuple(det.options.thresholds)
        except ConfigError as e:
            raise BadRequest(str(e)) from None
        top_k = data.get("top_k", self.app_config.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, str)) or not str(top_k).isdigit() or int(top_k) < 1:
            raise BadRequest(f"params.top_k={top_k!r}: expected an integer >= 1.")
        data["top_k"] = int(top_k)
        for key in ("write_dicom", "save_anomaly_map"):
            data[key] = _as_bool(key, data.get(key, True))
        label_format(data)  # fail before the (long) inference, not after it
        return data

    # ------------------------------------------------------------------ pipeline
    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [self._check_request, self._load]

    def _load(self, data: dict[str, Any]) -> dict[str, Any]:
        from medad.io import load_volume, volume_source

        source = volume_source(data["image"])
        try:
            data["volume"] = load_volume(source)
        except (ValueError, FileNotFoundError) as e:  # medad.io.SeriesLoadError is a ValueError
            raise BadRequest(f"Cannot read the image as one volume: {e}") from e
        data["source"] = source
        return data

    def inferer(self, data=None):
        return None

    def run_inferer(self, data: dict[str, Any], convert_to_batch=True, device="cuda"):
        from .server.queue import current_job

        det, runner = self.store.get()
        job = current_job()
        if job is not None:  # progress for GET /medad/queue
            from medad.transforms.slicing import RASSlicer

            vol = data["volume"]
            axis = self.app_config.runner_options.get("axis", "axial")
            job.progress(0, RASSlicer(tuple(vol.shape[1:]), vol.affine, axis, vol.meta.get("space")).n_slices)
            runner = self.store.make_runner(det, job)
        result = runner.run(data["volume"])
        data["volume_result"] = result
        data["anomaly_map"] = result.anomaly_map  # [1, X, Y, Z] on the volume's grid
        scores = np.asarray(result.slice_scores, dtype=np.float64)
        skipped = np.asarray(result.skipped, dtype=bool) if len(result.skipped) == len(scores) \
            else np.zeros(len(scores), dtype=bool)
        top = list(result.top_slices)
        if data["top_k"] != len(top):  # another top_k than the runner's: rank the scored slices the same way
            scored = np.flatnonzero(~skipped)
            top = [int(i) for i in scored[np.argsort(-scores[scored], kind="stable")][: data["top_k"]]]
        data["result"] = {
            "volume_score": round(float(result.volume_score), 6),
            "top_slices": [int(i) for i in top],
            "top_slice_numbers": [int(i) + 1 for i in top],
            "slice_scores": [round(float(s), 6) for s in scores],
            "slice_axis": result.axis,
            "slice_dim": result.source_dim,
            "n_slices": int(result.n_slices),
            "skipped_slices": int(skipped.sum()),
            "flagged": result.flagged,
            "calibrated": bool(result.calibrated),
        }
        return data

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [self._to_labels]

    def _to_labels(self, data: dict[str, Any]) -> dict[str, Any]:
        amap: MetaTensor = data["anomaly_map"]
        ref = reference_geometry(data["image"])
        if ref is not None:
            amap = to_reference_grid(amap, ref[0], ref[1], what=os.path.basename(data["image"]))
        data["anomaly_map"] = amap
        data["volume_result"] = dataclasses.replace(data["volume_result"], anomaly_map=amap)  # what is written
        labels = grade(amap[0], data["thresholds"])
        data["pred"] = MetaTensor(torch.from_numpy(labels), affine=amap.affine.clone())
        grading = grading_summary(labels, data["thresholds"], GRADE_LABELS)
        data["result"].update({
            "thresholds": grading["thresholds"],
            "label_voxels": {name: grading["voxels"][name] for name in LABELS},
            "grading": grading,
            "max_score": round(float(amap.max()), 6),
            "legend": legend(data["thresholds"], GRADE_LABELS),
            "label_colors": label_colors(GRADE_LABELS),
        })
        r = data["result"]
        r["summary"] = slice_summary(r["volume_score"], r["top_slices"], r["n_slices"], r["slice_scores"],
                                     r["slice_axis"], grading["voxels"], r["flagged"])
        return data

    # ------------------------------------------------------------------ outputs
    def writer(self, data: dict[str, Any], extension=None, dtype=None):
        ext, np_dtype = label_format({**data, **({"result_extension": extension} if extension else {}),
                                      **({"result_dtype": dtype} if dtype else {})})
        meta = None
        if ext.lower() in (".nrrd", ".seg.nrrd"):  # a 3D Slicer segmentation: grade names and heat-ramp colours
            meta = seg_nrrd_metadata(tuple(data["pred"].shape), data["thresholds"], GRADE_LABELS)
            ext = ".seg.nrrd"
        result_file = write_label(data["pred"], ext, np_dtype, bool(data.get("result_compress", False)), meta)
        result_json = dict(data["result"])
        result_json["provenance"] = self.store.provenance()
        result_json["viewer"] = self._viewer(data)
        outputs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="medad_label_") as tmp:
            if data["save_anomaly_map"]:
                outputs[ANOMALY_MAP_TAG] = self._save_map(data, Path(tmp), result_json["provenance"])
            if data["write_dicom"]:
                try:
                    outputs["dicom"] = self._write_dicom(data, Path(tmp), result_json["provenance"])
                except Exception as e:  # noqa: BLE001 - a PACS problem must not keep the label from the viewer
                    logger.warning("DICOM Parametric Map/SEG not written or not stored: %s", e)
                    outputs["dicom"] = {"written": False, "error": f"{type(e).__name__}: {e}"}
        result_json["outputs"] = outputs
        return result_file, result_json

    def _viewer(self, data: dict[str, Any]) -> dict[str, Any]:
        """Where the reviewer sees more: the 3D Slicer console line for the continuous map (datastore studies), the
        OHIF path at the most anomalous slice and the top slices' instances (DICOM series)."""
        out: dict[str, Any] = {}
        base = data.get("medad_base_url") or "http://127.0.0.1:8000"
        if data.get("image_id") and data.get("save_anomaly_map"):
            from .review import slicer_overlay_line

            out["slicer_overlay"] = slicer_overlay_line(base, data["image_id"])
        try:
            top = top_slice_instances(data["volume"], data["result"]["top_slices"], data["result"]["slice_dim"])
        except Exception as e:  # noqa: BLE001 - only a convenience
            logger.debug("top slice instances: %s", e)
            top = []
        if top:
            out["top_slice_instances"] = top
        path = ohif_viewer_path(data["volume"], top)
        if path:
            out["ohif"] = path
        return out

    @staticmethod
    def _options(data: dict[str, Any], provenance: dict[str, Any], **kw: Any) -> OutputOptions:
        return OutputOptions(overlays=0, provenance=provenance, thresholds=data["thresholds"], labels=GRADE_LABELS,
                             **kw)

    def _save_map(self, data: dict[str, Any], tmp: Path, provenance: dict[str, Any]) -> dict[str, Any]:
        """Save the float32 map as NIfTI under the datastore tag ``anomaly_map`` (datastore images only)."""
        image_id = data.get("image_id")
        store = self.datastore() if self.datastore else None
        if not image_id or store is None:
            return {"saved": False, "reason": "not a datastore image"}
        record = write_outputs(data["volume_result"], data["volume"], tmp,
                               self._options(data, provenance, nifti=True, dicom=False,
                                             names={"nifti": f"{image_id}.nii.gz"}))
        info = {"model": data.get("model"), "volume_score": data["result"]["volume_score"],
                "thresholds": data["result"]["thresholds"], "model_sha256": provenance.get("model_sha256")}
        try:
            label_id = store.save_label(image_id, str(tmp / record.files["nifti"]), ANOMALY_MAP_TAG, info)
        except Exception as e:  # noqa: BLE001 - the label map must still reach the viewer
            logger.warning("could not save the anomaly map in the datastore: %s", e)
            return {"saved": False, "reason": f"{type(e).__name__}: {e}"}
        return {"saved": True, "tag": ANOMALY_MAP_TAG, "label": label_id}

    def _write_dicom(self, data: dict[str, Any], tmp: Path, provenance: dict[str, Any]) -> dict[str, Any]:
        """Parametric Map + BINARY SEG for DICOM inputs (:func:`medad.inference.write_outputs`: its UID policy gives
        a new series for another model, memory bank or thresholds), STOWed when a DICOMweb url is known."""
        volume = data["volume"]
        if not volume.meta.get("source_files"):
            return {"written": False, "reason": "input is not a DICOM series"}
        from medad.io import stow

        record = write_outputs(data["volume_result"], volume, tmp,
                               self._options(data, provenance, nifti=False, dicom=True,
                                             names={"pm": "anomaly_pm.dcm", "seg": "anomaly_seg.dcm"}))
        out: dict[str, Any] = {"written": True, "stowed": False,
                               "parametric_map_series_uid": record.uids["pm_series"],
                               "segmentation_series_uid": record.uids["seg_series"]}
        if self.dicomweb_url:
            result = stow(self.dicomweb_url, [tmp / record.files["pm"], tmp / record.files["seg"]])
            out["stowed"] = len(result.stored) == 2
        return out
