"""Inference wiring: the volume inferer (``VolumeRunner`` per volume) and the output writers (NIfTI, DICOM, CSV)."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import collate_meta_tensor
from monai.inferers import Inferer
from monai.transforms import MapTransform
from torch import nn

from ..io._atomic import atomic_path
from ..model.options import DEFAULT_THRESHOLDS
from .data import output_name

__all__ = ["VolumeInferer", "prepare_volume_batch", "SaveAnomalyMapd", "SaveVolumeScoresd", "SCORE_META_KEYS", "CSV_COLUMNS"]

log = logging.getLogger(__name__)

#: ``meta`` keys :class:`VolumeInferer` adds to each anomaly map.
SCORE_META_KEYS = ("volume_score", "slice_scores", "top_slices", "n_slices", "slice_axis", "slice_dim")
#: Columns of the scores CSV written by :class:`SaveVolumeScoresd`.
CSV_COLUMNS = ("name", "input", "series_uid", "modality", "volume_score", "slices", "slice_axis", "slice_dim",
               "top_slices", "top_slice_scores", "anomaly_map", "parametric_map", "segmentation")


class VolumeInferer(Inferer):
    """Run :class:`medad.inference.VolumeRunner` on each volume of a batch (``SupervisedEvaluator``'s inferer).

    Args:
        runner_kwargs: passed to ``VolumeRunner`` (``batch_size`` slices per model call, ``axis``, ``intensity``,
            ``top_k``, ``view``, ``skip_empty``, ``volume_score``, ``progress``...).

    ``__call__(inputs, network)``: ``inputs`` ``[B, 1, X, Y, Z]`` (volumes of different shapes need a data loader
    ``batch_size`` of 1), ``network`` a :class:`SliceAnomalyNet` (or anything with ``.detector``, DDP unwrapped) ->
    anomaly maps ``[B, 1, X, Y, Z]`` in [0, 1] on the CPU, each with its volume's affine and meta plus the
    :data:`SCORE_META_KEYS`: ``volume_score`` (float), ``slice_scores`` ``[n_slices]``, ``top_slices`` (source slice
    indices, most anomalous first), ``n_slices``, ``slice_axis`` (``"axial"``...) and ``slice_dim`` (the source array
    dim holding the slices).
    """

    def __init__(self, **runner_kwargs: Any) -> None:
        super().__init__()
        self.runner_kwargs = runner_kwargs
        self._runner = None
        self._detector = None

    def runner(self, network: nn.Module):
        from ..inference import VolumeRunner

        net = getattr(network, "module", network)
        detector = getattr(net, "detector", net)
        if self._runner is None or self._detector is not detector:
            self._runner, self._detector = VolumeRunner(detector, **self.runner_kwargs), detector
        return self._runner

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> MetaTensor:
        if inputs.ndim != 5 or inputs.shape[1] != 1:
            raise ValueError(f"VolumeInferer expects a batch of single-channel volumes [B, 1, X, Y, Z]; got "
                             f"{tuple(inputs.shape)}")
        runner = self.runner(network)
        maps = []
        for b in range(inputs.shape[0]):
            vol = inputs[b].cpu()  # the runner streams slices to the detector's device itself
            res = runner.run(vol if isinstance(vol, MetaTensor) else MetaTensor(vol))
            amap = res.anomaly_map
            amap.meta.update({
                "volume_score": float(res.volume_score),
                "slice_scores": torch.as_tensor(res.slice_scores, dtype=torch.float32),
                "top_slices": torch.as_tensor(res.top_slices, dtype=torch.int64),
                "n_slices": int(res.n_slices),
                "slice_axis": str(res.axis),
                "slice_dim": int(res.source_dim) if res.source_dim is not None else -1,
            })
            maps.append(amap)
        return collate_meta_tensor(maps)


def prepare_volume_batch(batchdata: Mapping, device: Any = None, non_blocking: bool = False, **kwargs: Any):
    """``SupervisedEvaluator(prepare_batch=...)`` that leaves the volume where it is (CPU) instead of copying the whole
    volume to the GPU: :class:`VolumeInferer` sends the model one batch of slices at a time."""
    return batchdata["image"], None


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy().tolist() if v.ndim else v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


class SaveAnomalyMapd(MapTransform):
    """Write each anomaly map as ``<name>_<postfix>.nii.gz`` (:func:`medad.io.save_nifti`: the source affine as
    sform/qform) and, for DICOM sources, optionally a float32 Parametric Map and a graded BINARY SEG referencing the
    source series (:func:`medad.io.dicom_outputs.write_parametric_map` / ``write_segmentation``).

    Args:
        keys: the anomaly-map key (``"pred"``), a ``MetaTensor [1, X, Y, Z]`` on the source grid.
        output_dir: output folder. output_postfix: NIfTI name postfix (``anomaly``).
        parametric_map, segmentation: also write ``<name>_pm.dcm`` / ``<name>_seg.dcm`` (DICOM sources only; a
            NIfTI source is logged and skipped).
        thresholds: SEG grade thresholds (``anomaly_low/mid/high``); use the detector's calibrated ones
            (``network_def.detector.options.thresholds``).

    The written file names are added to the map's ``meta["saved_files"]`` for :class:`SaveVolumeScoresd`.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | os.PathLike = "./eval",
                 output_postfix: str = "anomaly", parametric_map: bool = False, segmentation: bool = False,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.parametric_map = parametric_map
        self.segmentation = segmentation
        self.thresholds = tuple(float(t) for t in thresholds)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from ..inference.grading import GRADE_LABELS, grade
        from ..inference.uids import output_uids, source_key, uid_salt
        from ..io.dicom_outputs import write_parametric_map, write_segmentation
        from ..io.writers import save_nifti

        d = dict(data)
        for key in self.key_iterator(d):
            amap = d[key]
            if not isinstance(amap, MetaTensor):
                raise TypeError(f"'{key}' must be a MetaTensor with the source affine, got {type(amap).__name__}")
            amap = amap.detach().cpu()
            name = output_name(amap.meta)
            stem = f"{name}_{self.output_postfix}" if self.output_postfix else name
            saved = {"nifti": save_nifti(amap, self.output_dir / f"{stem}.nii.gz").name}
            sources = list(amap.meta.get("source_files") or [])
            if (self.parametric_map or self.segmentation) and not sources:
                log.info("%s: not a DICOM series, no Parametric Map/SEG written", name)
            elif self.parametric_map or self.segmentation:
                uids = output_uids(source_key(amap.meta), uid_salt({}, self.thresholds))
                if self.parametric_map:
                    saved["pm"] = write_parametric_map(amap, sources, self.output_dir / f"{name}_pm.dcm",
                                                       series_uid=uids.pm_series,
                                                       sop_instance_uid=uids.pm_instance).name
                if self.segmentation:
                    graded = MetaTensor(torch.from_numpy(grade(amap[0], self.thresholds))[None],
                                        affine=amap.affine.clone())
                    saved["seg"] = write_segmentation(graded, sources, self.output_dir / f"{name}_seg.dcm",
                                                      labels=GRADE_LABELS, series_uid=uids.seg_series,
                                                      sop_instance_uid=uids.seg_instance).name
            d[key].meta["saved_files"] = saved
        return d


class SaveVolumeScoresd(MapTransform):
    """Write one CSV row per volume with its scores (the anomaly map's :data:`SCORE_META_KEYS`).

    Args:
        keys: the anomaly-map key (``"pred"``), after :class:`SaveAnomalyMapd` (for the file-name columns).
        output_dir: folder of the CSV. filename: CSV name (``scores.csv``).

    The file is rewritten atomically after every volume with all rows of this run (complete after each volume; a
    new run replaces it). Columns: :data:`CSV_COLUMNS` (names shared with ``medad score``'s ``results.csv`` where
    the meaning is the same); ``top_slices`` lists source slice indices (0-based, along array dim ``slice_dim``)
    separated by spaces, ``top_slice_scores`` their scores. No patient names or IDs.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | os.PathLike = "./eval",
                 filename: str = "scores.csv", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.path = Path(output_dir) / filename
        self.rows: list[dict] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            if "volume_score" not in meta:
                raise KeyError(f"'{key}' has no volume scores in its meta: use medad.bundle.VolumeInferer")
            name = output_name(meta)
            top = [int(i) for i in np.atleast_1d(_plain(meta["top_slices"]))]
            scores = np.atleast_1d(np.asarray(_plain(meta["slice_scores"]), dtype=float))
            saved = meta.get("saved_files") or {}
            row = {
                "name": name,
                "input": str(meta.get("filename_or_obj", "")),
                "series_uid": meta.get("series_uid", ""),
                "modality": meta.get("modality", ""),
                "volume_score": f"{float(_plain(meta['volume_score'])):.6f}",
                "slices": int(_plain(meta["n_slices"])),
                "slice_axis": meta.get("slice_axis", ""),
                "slice_dim": int(_plain(meta["slice_dim"])),
                "top_slices": " ".join(str(i) for i in top),
                "top_slice_scores": " ".join(f"{scores[i]:.6f}" for i in top),
                "anomaly_map": saved.get("nifti", ""),
                "parametric_map": saved.get("pm", ""),
                "segmentation": saved.get("seg", ""),
            }
            self.rows.append(row)
            log.info("%s: volume score %s, top slices [%s]", name, row["volume_score"], row["top_slices"])
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
                writer.writeheader()
                writer.writerows(self.rows)
        return d
