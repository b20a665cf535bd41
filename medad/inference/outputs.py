"""``write_outputs``: the one place that writes what a scored volume gives.

For one :class:`~medad.inference.runner.VolumeResult` and its source volume, :func:`write_outputs` writes (all files
atomic, in this order):

* ``anomaly_map.nii.gz``: the float32 map in the source geometry (:func:`medad.io.save_nifti`; its header
  description names the medad version and model digests), with ``anomaly_map.json`` next to it: the provenance,
  the scores (calibrated and raw, ``flagged``) and the grading;
* ``top<r>_slice<kkkk>.png``: overlays of the ``overlays`` most anomalous slices (:func:`medad.io.save_overlay_png`),
  the grades in the colours of :data:`medad.inference.grading.GRADE_COLORS` (as the SEG shows them);
* for DICOM sources with ``dicom=True``: ``pm.dcm``, a Parametric Map of the map (float32; ``pm="integer"``:
  ``pm_int.dcm``, 16-bit with a Real World Value Mapping to the score; ``pm="both"``: both), and ``seg.dcm``, a
  BINARY SEG of the graded map (:func:`medad.inference.grading.grade` with the thresholds; segment colours from
  :func:`~medad.inference.grading.grade_colors`), all referencing the source series and carrying the provenance,
  with the UIDs of :mod:`medad.inference.uids` (source, provenance, thresholds and a digest of the map);

and returns an :class:`OutputRecord`: the files written, the scores, the grading, the UIDs and the provenance.
``medad score`` (:mod:`medad.batch`), the MONAI bundle and the MONAI Label app all write their results through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .grading import GRADE_LABELS, check_thresholds, grade, grade_colors, grading_summary
from .uids import content_digest, output_uids, source_key, uid_salt

__all__ = ["DEFAULT_NAMES", "PM_KINDS", "OutputOptions", "OutputRecord", "result_scores", "write_outputs"]

#: Default file names (``png`` is formatted with ``rank`` (1-based) and ``slice`` (source slice index)).
DEFAULT_NAMES: dict[str, str] = {"nifti": "anomaly_map.nii.gz", "png": "top{rank}_slice{slice:04d}.png",
                                 "pm": "pm.dcm", "pm_int": "pm_int.dcm", "seg": "seg.dcm"}
#: Parametric Map kinds: ``float`` (float32, the default), ``integer`` (uint16 + value mapping), ``both``.
PM_KINDS = ("float", "integer", "both")


@dataclass(frozen=True)
class OutputOptions:
    """What :func:`write_outputs` writes.

    Attributes:
        nifti: write the float32 NIfTI map.
        overlays: PNG overlays of that many top slices (0: none).
        dicom: write a Parametric Map + BINARY SEG for a DICOM source (a NIfTI source gets a note instead).
        pm: which Parametric Map(s): ``"float"``, ``"integer"`` or ``"both"`` (:data:`PM_KINDS`).
        provenance: :func:`medad.inference.provenance.provenance` of the detector and runner; recorded and mixed
            into the DICOM UIDs. Compute it once per model.
        thresholds: grading thresholds (strictly increasing); None: ``provenance["thresholds"]`` (the detector's),
            else :data:`medad.model.options.DEFAULT_THRESHOLDS`.
        labels: one grade name per threshold (SEG segment labels).
        names: file names overriding :data:`DEFAULT_NAMES` (e.g. ``{"nifti": "case1_anomaly.nii.gz"}``).
    """

    nifti: bool = True
    overlays: int = 3
    dicom: bool = False
    pm: str = "float"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    thresholds: Optional[Sequence[float]] = None
    labels: Sequence[str] = GRADE_LABELS
    names: Mapping[str, str] = field(default_factory=dict)

    def grading_thresholds(self) -> tuple[float, ...]:
        """The thresholds in use (see ``thresholds``)."""
        from ..model.options import DEFAULT_THRESHOLDS

        t = self.thresholds if self.thresholds is not None else self.provenance.get("thresholds") or DEFAULT_THRESHOLDS
        return check_thresholds(t)

    def file_name(self, kind: str, **fmt: Any) -> str:
        names = {**DEFAULT_NAMES, **self.names}
        if kind == "sidecar" and kind not in names:  # next to the NIfTI: anomaly_map.nii.gz -> anomaly_map.json
            nifti = names["nifti"]
            stem = nifti[: -len(".nii.gz")] if nifti.endswith(".nii.gz") else nifti.rsplit(".", 1)[0]
            return stem + ".json"
        return names[kind].format(**fmt)


@dataclass
class OutputRecord:
    """What :func:`write_outputs` wrote (plain values; ``to_dict()`` is JSON-ready).

    Attributes:
        files: paths relative to ``out_dir`` (POSIX): ``nifti``, ``sidecar``, ``pngs`` (list), ``pm``, ``pm_int``,
            ``seg``; ``dicom`` holds a note when DICOM outputs were asked for a source that is not a DICOM series.
        scores: :func:`result_scores` of the result.
        grading: :func:`medad.inference.grading.grading_summary` of the map (thresholds, labels, voxels per grade).
        uids: Series/SOP Instance UIDs of the objects written (``pm_series``, ``pm_instance``, ``pm_int_series``,
            ``pm_int_instance``, ``seg_series``, ``seg_instance``), else empty.
        provenance: the options' provenance fields.
    """

    files: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    grading: dict[str, Any] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def result_scores(result: Any) -> dict[str, Any]:
    """The scores of a :class:`~medad.inference.runner.VolumeResult` as plain values: ``n_slices``,
    ``volume_score``, ``top_slices``, ``top_slice_scores`` and ``slice_scores`` (source slice order, 6 decimals),
    ``raw_volume_score``, ``flagged`` (True/False, None when uncalibrated) and ``calibrated``."""
    top = [int(k) for k in result.top_slices]
    raw = getattr(result, "raw_volume_score", None)
    flagged = getattr(result, "flagged", None)
    return {"n_slices": int(result.n_slices), "volume_score": float(result.volume_score), "top_slices": top,
            "top_slice_scores": [float(result.slice_scores[k]) for k in top],
            "slice_scores": [round(float(v), 6) for v in result.slice_scores],
            "raw_volume_score": float(result.volume_score if raw is None else raw),
            "flagged": None if flagged is None else bool(flagged),
            "calibrated": bool(getattr(result, "calibrated", False))}


def nifti_description(provenance: Mapping[str, Any]) -> str:
    """The NIfTI header description of a map (79 ASCII characters at most): medad version and model digests."""
    p = provenance
    op = p.get("operating_point") or None
    text = (f"medad {p.get('medad', '')} anomaly 0-1 model {str(p.get('model_sha256', ''))[:12]} adapters "
            f"{str(p.get('adapters_sha256', ''))[:12]} bb {str(p.get('backbone_sha256', ''))[:12]} "
            + (f"op {op['operating_point']:.4f}" if op else "uncal"))
    return text[:79]


def _slices_last(mt, dim: int):
    """MetaTensor ``[1, X, Y, Z]`` with spatial ``dim`` moved last (affine columns permuted alike)."""
    from monai.data import MetaTensor

    if dim == 2:
        return mt
    perm = [d for d in range(3) if d != dim] + [dim]
    aff = mt.affine.clone()
    aff[:3, :3] = aff[:3, perm]
    return MetaTensor(mt.as_tensor().permute(0, *[p + 1 for p in perm]), affine=aff, meta=dict(mt.meta))


def write_outputs(result: Any, volume: Any, out_dir: str | os.PathLike,
                  options: Optional[OutputOptions] = None) -> OutputRecord:
    """Write the outputs of one scored volume into ``out_dir`` (created); see the module docstring.

    Args:
        result: the :class:`~medad.inference.runner.VolumeResult` of ``VolumeRunner.run(volume)`` (3D).
        volume: the source ``MetaTensor [1, X, Y, Z]`` (overlay background; ``meta["source_files"]`` and
            ``meta["series_key"]`` for the DICOM outputs).
        out_dir: output folder.
        options: :class:`OutputOptions` (default: NIfTI + 3 overlays, no DICOM).

    Returns:
        :class:`OutputRecord`. Raises on the first error (nothing is half-written: every file is atomic).
    """
    import torch
    from monai.data import MetaTensor

    from ..io import save_nifti, save_overlay_png, write_parametric_map, write_segmentation

    import json

    from ..io import write_text_atomic

    opts = options or OutputOptions()
    if opts.pm not in PM_KINDS:
        raise ValueError(f"pm must be one of {PM_KINDS}, not {opts.pm!r}")
    if result.source_dim is None or result.anomaly_map.ndim != 4:
        raise ValueError("write_outputs takes the result of VolumeRunner.run on a 3D volume ([1, X, Y, Z])")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = opts.grading_thresholds()
    labels = list(opts.labels)
    rec = OutputRecord(scores=result_scores(result), provenance=dict(opts.provenance))
    amap = result.anomaly_map
    graded = grade(amap[0], thresholds)
    rec.grading = grading_summary(graded, thresholds, labels)

    colors = grade_colors(len(thresholds))
    if opts.nifti:
        rec.files["nifti"] = save_nifti(amap, out / opts.file_name("nifti"),
                                        description=nifti_description(opts.provenance)).relative_to(out).as_posix()
        sidecar = {"provenance": rec.provenance, "grading": rec.grading,
                   "scores": {k: v for k, v in rec.scores.items() if k != "slice_scores"},
                   "values": "voxel anomaly score in [0, 1] (0 normal, 1 most abnormal); grades as in 'grading'"}
        rec.files["sidecar"] = write_text_atomic(out / opts.file_name("sidecar"), json.dumps(
            sidecar, indent=1, sort_keys=True) + "\n").relative_to(out).as_posix()
    pngs = []
    if opts.overlays > 0:
        img, smap = _slices_last(volume, result.source_dim), _slices_last(amap, result.source_dim)
        lab = MetaTensor(torch.from_numpy(graded[None]), affine=amap.affine.clone())
        smap_lab = _slices_last(lab, result.source_dim)
        for r, k in enumerate(rec.scores["top_slices"][: opts.overlays], start=1):
            path = save_overlay_png(img, smap, out / opts.file_name("png", rank=r, slice=k), k, labels=smap_lab,
                                    colors=[c.rgb_float for c in colors])
            pngs.append(path.relative_to(out).as_posix())
    rec.files["pngs"] = pngs

    sources = list(volume.meta.get("source_files") or [])
    if opts.dicom and sources:
        uids = output_uids(source_key(volume.meta), uid_salt(opts.provenance, thresholds, labels),
                           content_digest(amap))
        written = {}
        if opts.pm in ("float", "both"):
            written["pm_series"], written["pm_instance"] = uids.pm_series, uids.pm_instance
            rec.files["pm"] = write_parametric_map(
                amap, sources, out / opts.file_name("pm"), series_uid=uids.pm_series,
                sop_instance_uid=uids.pm_instance, provenance=opts.provenance).relative_to(out).as_posix()
        if opts.pm in ("integer", "both"):
            written["pm_int_series"], written["pm_int_instance"] = uids.pm_int_series, uids.pm_int_instance
            rec.files["pm_int"] = write_parametric_map(
                amap, sources, out / opts.file_name("pm_int"), series_uid=uids.pm_int_series,
                sop_instance_uid=uids.pm_int_instance, provenance=opts.provenance,
                integer=True).relative_to(out).as_posix()
        label_map = MetaTensor(torch.from_numpy(graded[None]), affine=amap.affine.clone())
        rec.files["seg"] = write_segmentation(
            label_map, sources, out / opts.file_name("seg"), labels=labels, series_uid=uids.seg_series,
            sop_instance_uid=uids.seg_instance, thresholds=thresholds, colors=[c.cielab for c in colors],
            provenance=opts.provenance).relative_to(out).as_posix()
        written["seg_series"], written["seg_instance"] = uids.seg_series, uids.seg_instance
        rec.uids = written
    elif opts.dicom:
        rec.files["dicom"] = "not a DICOM series: no PM/SEG written"
    return rec
