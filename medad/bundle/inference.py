"""Inference wiring: the volume inferer (``VolumeRunner`` per volume) and the output transforms.

The outputs are written by :func:`medad.inference.write_outputs` (the NIfTI map, the DICOM Parametric Map and SEG,
with the grading, UIDs and provenance of :mod:`medad.inference`) and the scores table has the columns of
:data:`medad.inference.RESULTS_COLUMNS`, exactly as ``medad score`` and the MONAI Label app write them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import collate_meta_tensor
from monai.inferers import Inferer
from monai.transforms import MapTransform
from torch import nn

from ..inference import (OutputOptions, VolumeResult, provenance, result_scores, results_row, series_fields,
                         write_outputs, write_results_csv)
from ..io import write_text_atomic
from .data import output_name

__all__ = ["VolumeInferer", "prepare_volume_batch", "SaveAnomalyMapd", "SaveVolumeScoresd", "SCORE_META_KEYS",
           "volume_result"]

log = logging.getLogger(__name__)

#: ``meta`` keys :class:`VolumeInferer` adds to each anomaly map.
SCORE_META_KEYS = ("volume_score", "slice_scores", "top_slices", "n_slices", "slice_axis", "slice_dim")


class VolumeInferer(Inferer):
    """Run :class:`medad.inference.VolumeRunner` on each volume of a batch (``SupervisedEvaluator``'s inferer).

    Args:
        runner_kwargs: passed to ``VolumeRunner`` (``batch_size`` slices per model call, ``axis``, ``intensity``,
            ``top_k``, ``view``, ``skip_empty``, ``volume_score``, ``progress``...).

    After the first call, :attr:`provenance` holds :func:`medad.inference.provenance` of the detector and runner
    (what :class:`SaveAnomalyMapd` records and derives the DICOM UIDs from).

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
        self.provenance: Optional[dict[str, Any]] = None

    def runner(self, network: nn.Module):
        from ..inference import VolumeRunner

        net = getattr(network, "module", network)
        detector = getattr(net, "detector", net)
        if self._runner is None or self._detector is not detector:
            self._runner, self._detector = VolumeRunner(detector, **self.runner_kwargs), detector
            self.provenance = provenance(detector, self._runner)
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


def volume_result(amap: MetaTensor) -> VolumeResult:
    """The :class:`~medad.inference.VolumeResult` of an anomaly map from :class:`VolumeInferer` (its
    :data:`SCORE_META_KEYS`), as :func:`medad.inference.write_outputs` takes it."""
    meta = amap.meta
    if "volume_score" not in meta:
        raise KeyError("the anomaly map has no volume scores in its meta: use medad.bundle.VolumeInferer")
    dim = int(_plain(meta["slice_dim"]))
    return VolumeResult(anomaly_map=amap, volume_score=float(_plain(meta["volume_score"])),
                        slice_scores=np.atleast_1d(np.asarray(_plain(meta["slice_scores"]), dtype=np.float32)),
                        top_slices=[int(i) for i in np.atleast_1d(_plain(meta["top_slices"]))],
                        axis=str(meta.get("slice_axis", "")), n_slices=int(_plain(meta["n_slices"])),
                        source_dim=dim if dim >= 0 else None)


class SaveAnomalyMapd(MapTransform):
    """Write each volume's outputs with :func:`medad.inference.write_outputs` into ``<output_dir>/<name>/``:
    ``<name>_<postfix>.nii.gz`` (float32 map, the source affine) and, with ``dicom`` and a DICOM source, a float32
    Parametric Map ``<name>_pm.dcm`` and a graded BINARY SEG ``<name>_seg.dcm`` referencing the source series.

    Args:
        keys: the anomaly-map key (``"pred"``), a ``MetaTensor [1, X, Y, Z]`` on the source grid from
            :class:`VolumeInferer`.
        output_dir: output folder. output_postfix: NIfTI name postfix (``anomaly``).
        dicom: also write the Parametric Map and SEG (DICOM sources only; a NIfTI source is logged and skipped).
        inferer: the :class:`VolumeInferer` that made the maps: its provenance (model fingerprint, runner settings)
            is recorded and gives the DICOM UIDs (:mod:`medad.inference.uids`).
        thresholds: grading thresholds (``anomaly_low/mid/high``); None (default): the detector's own.
        image_key: the source volume's key (``meta["source_files"]`` for the DICOM outputs); the map's meta (a copy
            of the volume's) when absent.

    The :class:`medad.inference.OutputRecord` of each volume is put in the map's ``meta["medad_outputs"]`` (as a
    dict) for :class:`SaveVolumeScoresd`.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | os.PathLike = "./eval",
                 output_postfix: str = "anomaly", dicom: bool = False, inferer: Optional[VolumeInferer] = None,
                 thresholds: Optional[Sequence[float]] = None, image_key: str = "image",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.dicom = dicom
        self.inferer = inferer
        self.thresholds = None if thresholds is None else tuple(float(t) for t in thresholds)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prov = dict(getattr(self.inferer, "provenance", None) or {})
        for key in self.key_iterator(d):
            amap = d[key]
            if not isinstance(amap, MetaTensor):
                raise TypeError(f"'{key}' must be a MetaTensor with the source affine, got {type(amap).__name__}")
            amap = amap.detach().cpu()
            volume = d.get(self.image_key)
            volume = volume if isinstance(volume, MetaTensor) else amap
            name = output_name(amap.meta)
            stem = f"{name}_{self.output_postfix}" if self.output_postfix else name
            options = OutputOptions(nifti=True, overlays=0, dicom=self.dicom, provenance=prov,
                                    thresholds=self.thresholds,
                                    names={"nifti": f"{stem}.nii.gz", "pm": f"{name}_pm.dcm", "seg": f"{name}_seg.dcm"})
            record = write_outputs(volume_result(amap), volume, self.output_dir / name, options)
            if "dicom" in record.files:
                log.info("%s: not a DICOM series, no Parametric Map/SEG written", name)
            d[key].meta["medad_outputs"] = record.to_dict()
        return d


class SaveVolumeScoresd(MapTransform):
    """Write the scores table: one row per volume with the columns of :data:`medad.inference.RESULTS_COLUMNS`
    (the same table as ``medad score``'s ``results.csv``), plus ``run.json`` with the provenance fields.

    Args:
        keys: the anomaly-map key (``"pred"``), after :class:`SaveAnomalyMapd`.
        output_dir: folder of the CSV. filename: CSV name (``scores.csv``).

    The file is rewritten atomically after every volume with all rows of this run (complete after each volume; a
    new run replaces it). ``series_key`` is the SeriesInstanceUID for DICOM series and the volume's ``name`` for
    other files (never a path); ``output_dir`` is the volume's folder (``<name>``); ``top_slices`` are source slice
    indices (0-based, along the map's slice dim) separated by spaces. No patient names or IDs.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str | os.PathLike = "./eval",
                 filename: str = "scores.csv", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.path = Path(output_dir) / filename
        self.rows: list[dict] = []

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        prov = None
        for key in self.key_iterator(d):
            amap = d[key]
            scores = result_scores(volume_result(amap))
            name = output_name(amap.meta)
            written = amap.meta.get("medad_outputs") or {}
            prov = written.get("provenance") or prov
            row = results_row(series_fields(amap), "ok", scores=scores, anonymous_key=name,
                              output_dir=name if written else "", provenance=prov)
            self.rows.append(row)
            log.info("%s: volume score %s, top slices [%s]", name, row["volume_score"], row["top_slices"])
        write_results_csv(self.path, self.rows)
        if prov:
            write_text_atomic(self.path.parent / "run.json", json.dumps(prov, indent=1, sort_keys=True) + "\n")
        return d
