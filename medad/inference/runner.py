"""The volume runner: a 3D volume (or one 2D image) in, a 3D anomaly map in the source geometry and scores out.

Every front-end (MONAI bundle, MONAI Label app, ``medad score``) calls :class:`VolumeRunner`, so all of them share
the same slicing, intensity, padding and scoring rules:

1. **Intensity** statistics are computed once on the whole volume (``medad.transforms.make_intensity``: ``"auto"``
   picks CT window / MR foreground percentiles / other percentiles from ``meta["modality"]``).
2. **Slices** along ``axis`` (after RAS orientation; axial = RAS spatial dim 2) are streamed ``batch_size`` at a time
   with :class:`~medad.transforms.slicing.RASSlicer`: no reoriented copy of the volume is made. Each batch is moved to
   the detector's device (``detector.device``, else CPU) and scaled there,
   shown to the model in the ``view`` layout (default ``"radiological"``), padded to a square (no cropping), resized
   to ``detector.image_size`` (bicubic + antialias, the detector's own rule), and scored.
3. The maps are resized back (bilinear), un-padded, un-viewed and written straight into one preallocated float32
   array in the *source* voxel order, so the result has exactly the source shape and affine.

Memory is flat in the number of slices: input + one float32 output + O(batch) temporaries.

Rules (documented choices):

* **Empty slices** (all 0 after intensity scaling, i.e. background only: air under a brain window, the background
  outside a skull-stripped brain under MR foreground percentiles) are not sent to the model when
  ``skip_empty=True``: their map is 0, their slice score 0, and they are never
  in ``top_slices``. ``VolumeResult.skipped`` marks them.
* **Volume score** (``volume_score="topk_mean"``, default): the mean of the ``top_k`` highest slice scores among the
  scored slices (robust to one noisy slice, still driven by the most anomalous region); ``"max"``: the highest slice
  score. A volume with no scored slice gets 0.
* **Calibration**: when the detector carries a :class:`medad.model.options.Calibration`
  (``detector.options.calibration``, fitted by ``medad calibrate`` on normal studies) made with this runner's
  settings for these adapters, the reported volume, slice and 2D image scores are calibrated (in [0, 1]: the
  normal-population percentile of the raw score) and ``flagged`` says whether the study is above the operating point;
  the raw scores stay in ``raw_volume_score``/``raw_slice_scores``. Otherwise (no calibration, or one made with other
  settings or adapters: :meth:`VolumeRunner.calibration_status` says why) the scores are the raw detector scores and
  ``flagged`` is None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from ..transforms.intensity.array import FixedRangeScale, ModalityIntensity, RangeScale, apply_ranges, make_intensity
from ..transforms.slicing import AXES, VIEWS, RASSlicer
from ..transforms.spatial.array import square_pad_width

__all__ = ["VolumeResult", "VolumeRunner"]


@dataclass
class VolumeResult:
    """Output of :meth:`VolumeRunner.run` / :meth:`VolumeRunner.run_2d`.

    Attributes:
        anomaly_map: float32 MetaTensor ``[1, X, Y, Z]`` (``[1, H, W]`` for 2D) in [0, 1] with the source affine/meta.
        volume_score: one score per volume (rule: see the module docstring).
        slice_scores: ``[n_slices]`` float32, indexed by the *source* slice index along ``source_dim``.
        top_slices: up to ``top_k`` source slice indices, most anomalous first.
        axis: ``"axial"``, ``"coronal"``, ``"sagittal"`` (None for 2D).
        n_slices: number of slices along the slice axis (1 for 2D).
        source_dim: the source spatial dim that holds the slices (``anomaly_map[0].select(source_dim, i)`` is
            slice ``i``); None for 2D.
        skipped: ``[n_slices]`` bool, True for empty slices not sent to the model.
        raw_volume_score, raw_slice_scores: the uncalibrated scores (the same as ``volume_score``/``slice_scores``
            when no calibration is applied).
        flagged: True/False when a calibration is applied (raw volume score above the operating point), else None.
        calibrated: whether ``volume_score``/``slice_scores`` are calibrated scores in [0, 1].
    """

    anomaly_map: MetaTensor
    volume_score: float
    slice_scores: np.ndarray
    top_slices: list[int]
    axis: str | None
    n_slices: int
    source_dim: int | None = None
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    raw_volume_score: float | None = None
    raw_slice_scores: np.ndarray | None = None
    flagged: bool | None = None
    calibrated: bool = False


class VolumeRunner:
    """Score a volume slice by slice with a detector and assemble a 3D map in the source geometry.

    Args:
        detector: an object with ``predict(images [B,3,H,W] float in [0,1]) -> res`` (``res.image_scores [B]``,
            ``res.anomaly_maps [B,H,W]`` in [0,1] at the input size) and ``image_size`` (e.g.
            ``medad.load_detector(backbone="tiny")``).
        batch_size: slices per model call (results do not depend on it).
        axis: ``"axial"`` (default), ``"coronal"`` or ``"sagittal"`` (RAS definitions).
        intensity: ``"auto"`` (by modality), ``"ct:brain"``, ``"ct:brain,soft_tissue,bone"``, ``"mr"``,
            ``"percentile"``, ``"minmax"``, ``"uint8"``, ``"none"`` or a ``RangeScale`` transform
            (see :func:`medad.transforms.make_intensity`).
        top_k: number of slices in ``top_slices`` and in the ``"topk_mean"`` volume score.
        progress: show a tqdm bar over batches.
        view: in-plane layout shown to the model: ``"radiological"`` (default), ``"ras"`` or ``"brats_png"``
            (see :mod:`medad.transforms.slicing`). Use the layout of the images the adapters were trained on.
        skip_empty: do not score background-only slices (all 0 after scaling): map 0, score 0.
        volume_score: ``"topk_mean"`` (default) or ``"max"``.
        resize_to_model: resize padded slices to ``detector.image_size`` here and maps back here (default; keeps the
            detector's per-batch maps at 240x240). False passes slices at native size (the detector resizes them).
    """

    def __init__(self, detector: Any, batch_size: int = 32, axis: str = "axial", intensity: str | RangeScale = "auto",
                 top_k: int = 5, progress: bool = False, view: str = "radiological", skip_empty: bool = True,
                 volume_score: str = "topk_mean", resize_to_model: bool = True) -> None:
        if not hasattr(detector, "predict"):
            raise TypeError(f"detector must have a predict(images) method (see medad.load_detector); "
                            f"got {type(detector).__name__}")
        if int(batch_size) < 1 or int(top_k) < 1:
            raise ValueError(f"batch_size and top_k must be >= 1; got batch_size={batch_size}, top_k={top_k}")
        if isinstance(axis, int) or axis.strip().lower() not in AXES:
            raise ValueError(f"axis must be one of {list(AXES)}; got {axis!r}")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {list(VIEWS)}; got {view!r}")
        if volume_score not in ("topk_mean", "max"):
            raise ValueError(f"volume_score must be 'topk_mean' or 'max'; got {volume_score!r}")
        self.detector = detector
        self.batch_size = int(batch_size)
        self.axis = axis.strip().lower()
        self.intensity = make_intensity(intensity)
        self.intensity_spec = intensity
        self.top_k = int(top_k)
        self.progress = progress
        self.view = view
        self.skip_empty = skip_empty
        self.volume_score_rule = volume_score
        self.resize_to_model = resize_to_model
        self.image_size = int(getattr(detector, "image_size", 240))
        self._calibration: tuple[Any, str] | None = None

    def calibration_status(self) -> tuple[Any, str]:
        """``(calibration or None, note)``: the detector's :class:`~medad.model.options.Calibration` when it was
        fitted with this runner's settings on these adapters and backbone, else None and why not (decided once)."""
        if self._calibration is None:
            self._calibration = self._check_calibration()
        return self._calibration

    def _check_calibration(self) -> tuple[Any, str]:
        from .provenance import adapters_digest, runner_settings

        cal = getattr(getattr(self.detector, "options", None), "calibration", None)
        if cal is None:
            return None, "uncalibrated: raw detector scores, nothing flagged (fit an operating point: medad calibrate)"
        mine = runner_settings(self)
        if hasattr(self.detector, "state_dict"):
            mine["adapters_sha256"] = adapters_digest(self.detector)
            mine["backbone_sha256"] = str(getattr(self.detector, "metadata", {}).get("backbone_sha256", "") or "")
        diff = sorted(k for k, v in cal.settings.items() if k in mine and mine[k] != v)
        if diff:
            return None, ("calibration not applied: it was fitted with other " + ", ".join(
                f"{k}={cal.settings[k]!r}" if "sha256" not in k else f"{k}" for k in diff)
                + " (raw scores, nothing flagged; recalibrate with these settings: medad calibrate)")
        groups = "".join(f", {k} {c.n_studies} (<= {c.fpr_bound:.4f})" for k, c in sorted(cal.by_modality.items()))
        return cal, (f"calibrated on {cal.n_studies} normal studies at specificity {cal.specificity:g} "
                     f"(false-positive rate <= {cal.fpr_bound:.4f} over exchangeable normal studies"
                     + (f"; per modality{groups}" if groups else "") + ")")

    def _apply_calibration(self, res: VolumeResult, modality: Any = None) -> VolumeResult:
        """Fill the raw/calibrated fields of ``res`` (see the module docstring); ``modality`` picks the modality's
        own calibration when it has one."""
        res.raw_volume_score, res.raw_slice_scores = res.volume_score, res.slice_scores
        cal, _ = self.calibration_status()
        if cal is None:
            return res
        cal = cal.for_modality(modality)
        ss = np.asarray(cal.image_score(res.slice_scores), dtype=np.float32).reshape(res.slice_scores.shape)
        ss[res.skipped] = 0.0  # not scored: background only
        if res.source_dim is None:  # one 2D image: its image score is its only score
            res.volume_score = float(ss[0])
        else:
            res.volume_score = float(cal.volume_score(res.raw_volume_score)) if res.top_slices else 0.0
            res.flagged = cal.flagged(res.raw_volume_score) if res.top_slices else False
        res.slice_scores, res.calibrated = ss, True
        return res

    # ------------------------------------------------------------------ public API
    @torch.no_grad()  # not inference_mode: callers may edit the map in place
    def run(self, volume: MetaTensor | torch.Tensor | np.ndarray) -> VolumeResult:
        """Score a volume ``[1, X, Y, Z]`` (or ``[X, Y, Z]``; plain arrays get an identity affine).

        Returns a :class:`VolumeResult` whose ``anomaly_map`` has exactly the source shape ``[1, X, Y, Z]``, affine
        and meta (including ``applied_operations``, so ``Invertd`` further back still works).
        """
        vol = self._as_metatensor(volume, spatial_ndim=3)
        src = vol.as_tensor()[0]  # [X, Y, Z], a view
        slicer = RASSlicer(src.shape, vol.affine, self.axis, vol.meta.get("space"))
        ranges = self.intensity.ranges(vol)

        out = torch.zeros(src.shape, dtype=torch.float32)
        n = slicer.n_slices
        scores = np.zeros(n, dtype=np.float32)
        skipped = np.zeros(n, dtype=bool)
        to_view, from_view = VIEWS[self.view]
        device = self._device()
        for start in self._batches(n):
            stop = min(start + self.batch_size, n)
            raw = slicer.read(src, start, stop).to(device, non_blocking=True)  # scale/pad/resize on the model's device
            x = self._channels(apply_ranges(raw[None], ranges))  # [B, 1 or 3, U, V]
            empty = self._empty(x).cpu()
            skipped[start:stop] = empty.numpy()
            if not empty.any():  # the common case: no gather/scatter copies
                m, scores[start:stop] = self._predict(to_view(x))
                slicer.write(out, start, stop, from_view(m))
            elif not empty.all():
                keep = (~empty).nonzero().flatten()
                maps = torch.zeros((stop - start, *slicer.slice_shape), dtype=torch.float32)
                m, scores[start + keep.numpy()] = self._predict(to_view(x[keep.to(x.device)]))
                maps[keep] = from_view(m)
                slicer.write(out, start, stop, maps)
            # all empty: ``out`` is already 0 there

        # per-slice results in source slice order
        src_idx = slicer.source_index(np.arange(n))
        slice_scores = np.empty(n, dtype=np.float32)
        slice_scores[src_idx] = scores
        skipped_src = np.empty(n, dtype=bool)
        skipped_src[src_idx] = skipped
        top = self._top(slice_scores, skipped_src)
        return self._apply_calibration(VolumeResult(
            anomaly_map=self._like(out[None], vol), volume_score=self._volume_score(slice_scores, top),
            slice_scores=slice_scores, top_slices=top, axis=self.axis, n_slices=n, source_dim=slicer.source_dim,
            skipped=skipped_src), vol.meta.get("modality"))

    @torch.no_grad()  # not inference_mode: callers may edit the map in place
    def run_2d(self, image: MetaTensor | torch.Tensor | np.ndarray) -> VolumeResult:
        """Score one 2D image ``[H, W]``, ``[1, H, W]`` or ``[3, H, W]`` (RGB), already in display orientation.

        With ``intensity="auto"``, a uint8 image is scaled by 1/255 (PNG), otherwise by modality as for volumes (an
        X-ray or unknown modality uses whole-image percentiles). An RGB image keeps its colours (one range for all
        three channels). Returns a :class:`VolumeResult` with ``anomaly_map`` ``[1, H, W]`` and ``n_slices=1``.
        """
        img = self._as_metatensor(image, spatial_ndim=2)
        if img.shape[0] not in (1, 3):
            raise ValueError(f"a 2D image must have 1 or 3 channels ([C, H, W]); got shape {tuple(img.shape)}")
        t = self.intensity
        if isinstance(t, ModalityIntensity) and img.dtype == torch.uint8:
            t = FixedRangeScale(0.0, 255.0)
        ranges = t.ranges(img)
        x = apply_ranges(img.as_tensor().to(self._device()), ranges)  # [C', H, W]
        if x.shape[0] not in (1, 3):
            raise ValueError(f"{len(ranges)} intensity ranges on a {img.shape[0]}-channel image give {x.shape[0]} "
                             "channels; the detector takes 1 (gray) or 3")
        m, s = self._predict(x[None])
        m = m.clone()  # a plain tensor, not a view of the detector's (inference-mode) output
        score = float(s[0])
        return self._apply_calibration(VolumeResult(
            anomaly_map=self._like(m, img), volume_score=score, slice_scores=np.array([score], dtype=np.float32),
            top_slices=[0], axis=None, n_slices=1, source_dim=None, skipped=np.zeros(1, dtype=bool)),
            img.meta.get("modality"))

    @torch.no_grad()
    def model_inputs(self, volume: MetaTensor | torch.Tensor | np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The images :meth:`run` would show the detector: ``([S, 3, size, size] float32 CPU, source indices [S])``.

        Same intensity, view, padding, resizing and empty-slice rule as :meth:`run`, in slice order; use it to build
        a memory bank or a training set from volumes exactly as inference will see them. Holds all ``S`` inputs.
        """
        vol = self._as_metatensor(volume, spatial_ndim=3)
        src = vol.as_tensor()[0]
        slicer = RASSlicer(src.shape, vol.affine, self.axis, vol.meta.get("space"))
        ranges = self.intensity.ranges(vol)
        to_view, _ = VIEWS[self.view]
        inputs, index = [], []
        for start in range(0, slicer.n_slices, self.batch_size):
            stop = min(start + self.batch_size, slicer.n_slices)
            x = self._channels(apply_ranges(slicer.read(src, start, stop)[None], ranges))
            keep = (~self._empty(x)).nonzero().flatten()
            if len(keep):
                inputs.append(self._model_input(to_view(x[keep]))[0].float().contiguous())
                index.append(slicer.source_index(start + keep.numpy()))
        if not inputs:
            return torch.zeros(0, 3, self.image_size, self.image_size), np.zeros(0, dtype=np.int64)
        return torch.cat(inputs), np.concatenate(index)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _as_metatensor(data: Any, spatial_ndim: int) -> MetaTensor:
        if isinstance(data, np.ndarray):
            data = torch.as_tensor(data)
        if not isinstance(data, torch.Tensor):
            raise TypeError(f"expected a MetaTensor/tensor/ndarray image; got {type(data).__name__}. Load files with "
                            "medad.io (or monai LoadImage + EnsureChannelFirst) first.")
        if data.ndim == spatial_ndim:
            data = data[None]
        if data.ndim != spatial_ndim + 1 or (spatial_ndim == 3 and data.shape[0] != 1):
            want = "[1, X, Y, Z]" if spatial_ndim == 3 else "[C, H, W]"
            raise ValueError(f"expected a {spatial_ndim}D image {want}; got shape {tuple(data.shape)}. A multi-channel "
                             f"volume must be split into single-channel volumes first.")
        if not isinstance(data, MetaTensor):
            data = MetaTensor(data)  # identity affine
        return data

    def _device(self) -> torch.device:
        """The detector's device (``detector.device``), CPU when it has none."""
        dev = getattr(self.detector, "device", None)
        if isinstance(dev, (torch.device, str)):
            return torch.device(dev)
        return torch.device("cpu")

    def _batches(self, n: int):
        starts = range(0, n, self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            return tqdm(starts, desc=f"{self.axis} slices", unit="batch")
        return starts

    @staticmethod
    def _channels(x: torch.Tensor) -> torch.Tensor:
        """``[R, B, U, V]`` scaled slices -> ``[B, R, U, V]`` with R = 1 (gray) or 3 (one window per channel)."""
        if x.shape[0] in (1, 3):
            return x.transpose(0, 1)
        raise ValueError(f"the detector takes 3 channels; an intensity transform must give 1 or 3 ranges "
                         f"(e.g. 'ct:brain' or 'ct:brain,soft_tissue,bone'), got {x.shape[0]}")

    def _empty(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` bool: slices that are all 0 after intensity scaling (background only), when ``skip_empty``."""
        if not self.skip_empty:
            return torch.zeros(x.shape[0], dtype=torch.bool)
        return x.flatten(1).amax(1) <= 1e-6

    def _model_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, int], int]:
        """``[B, 1 or 3, H, W]`` in [0, 1] -> (model input ``[B, 3, S, S]``, pad ``(t, b, l, r)``, padded side).

        Pads to a square (0 = background), resizes to the model size on the 1-channel data when gray, and only then
        repeats gray to the 3 RGB channels, so the per-batch temporaries stay small.
        """
        h, w = x.shape[-2:]
        (t, b), (l, r) = square_pad_width((h, w))
        x = F.pad(x, (l, r, t, b)) if (t or b or l or r) else x.contiguous()
        side = x.shape[-1]
        if self.resize_to_model and side != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x, (t, b, l, r), side

    def _predict(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """``[B, 1 or 3, H, W]`` in [0, 1] -> maps ``[B, H, W]`` float32 (CPU) and scores ``[B]``."""
        x, (t, b, l, r), side = self._model_input(x)
        res = self.detector.predict(x)
        maps = torch.as_tensor(res.anomaly_maps).detach().float()
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.shape[-1] != side or maps.shape[-2] != side:  # resize back on the detector's device
            maps = F.interpolate(maps[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
        maps = maps[:, t: side - b, l: side - r].cpu()
        scores = torch.as_tensor(res.image_scores).detach().float().cpu().reshape(-1).numpy()
        return maps, scores

    def _top(self, slice_scores: np.ndarray, skipped: np.ndarray) -> list[int]:
        cand = np.flatnonzero(~skipped)
        order = cand[np.argsort(-slice_scores[cand], kind="stable")]
        return [int(i) for i in order[: self.top_k]]

    def _volume_score(self, slice_scores: np.ndarray, top: list[int]) -> float:
        if not top:
            return 0.0
        if self.volume_score_rule == "max":
            return float(slice_scores[top[0]])
        return float(np.mean(slice_scores[top]))

    @staticmethod
    def _like(arr: torch.Tensor, ref: MetaTensor) -> MetaTensor:
        """``arr`` as a MetaTensor with ``ref``'s affine, meta and applied operations (shallow copies)."""
        meta = {k: v for k, v in ref.meta.items() if k != "affine"}
        out = MetaTensor(arr.float(), affine=ref.affine.clone(), meta=meta)
        out.applied_operations = list(ref.applied_operations)
        return out
