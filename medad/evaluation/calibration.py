"""Calibration: fit the score calibration and the operating point of a detector on normal-only validation studies.

:func:`calibrate` scores normal studies with the :class:`~medad.inference.VolumeRunner` settings that will be used
for scoring, and fits a :class:`medad.model.options.Calibration` (stored in ``detector.options.calibration`` and so
in every checkpoint saved from it, see :func:`medad.checkpoints.save_checkpoint`):

* calibrated scores in [0, 1]: the normal-population percentile of a raw volume / slice score;
* the operating point at a target specificity (default 95 %), a split-conformal threshold on the raw volume score
  with the guarantee ``P(normal study flagged) <= (n + 1 - m) / (n + 1) <= 1 - specificity`` for studies exchangeable
  with the ``n`` calibration studies (see :class:`~medad.model.options.Calibration`); per modality (the volume's
  ``meta["modality"]``) when the studies hold at least ``1 / (1 - specificity) - 1`` of it and more than one
  modality is present;
* optionally the grading thresholds of the map (the SEG bands): voxel-value quantiles of the normal studies' maps
  (default 99 %, 99.9 %, 99.99 % of the voxels of scored slices), so ``anomaly_low`` means "higher than 99 % of
  normal voxels".

The studies must be normal (no finding), from the population and protocol the detector will score, and not used to
train the adapters. ``medad calibrate NORMAL_DIR... --adapters A.pt --out A_calibrated.pt`` is the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..model.options import DEFAULT_SPECIFICITY, Calibration

__all__ = ["DEFAULT_GRADE_QUANTILES", "CalibrationReport", "calibrate", "calibrate_inputs", "fit_grade_thresholds"]

log = logging.getLogger("medad.calibration")

#: Voxel quantiles of normal maps that become the grading thresholds (anomaly_low, anomaly_mid, anomaly_high).
DEFAULT_GRADE_QUANTILES: tuple[float, ...] = (0.99, 0.999, 0.9999)
_BINS = 100_000  # histogram of map values in [0, 1]: quantiles to 1e-5


@dataclass
class CalibrationReport:
    """What :func:`calibrate` fitted and on what.

    Attributes:
        calibration: the fitted :class:`~medad.model.options.Calibration` (also set on the detector).
        thresholds: the grading thresholds now on the detector (fitted or kept).
        volume_scores: raw volume score per normal study (in input order). keys: anonymous study keys.
        n_slices: scored slices in all studies.
    """

    calibration: Calibration
    thresholds: tuple[float, ...]
    volume_scores: list[float] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    n_slices: int = 0

    def summary(self) -> dict[str, Any]:
        return {**self.calibration.summary(), "thresholds": list(self.thresholds), "n_slices": self.n_slices}


def fit_grade_thresholds(hist: np.ndarray, quantiles: Sequence[float]) -> tuple[float, ...]:
    """Grading thresholds from a histogram of map values (``_BINS`` bins on [0, 1]): the upper edge of the bin
    where each quantile falls, made strictly increasing (steps of one bin) and kept inside (0, 1]."""
    q = [float(v) for v in quantiles]
    if not q or any(not 0.0 < v < 1.0 for v in q) or any(a >= b for a, b in zip(q, q[1:])):
        raise ValueError(f"grade quantiles must be strictly increasing values in (0, 1), not {q}")
    cdf = np.cumsum(hist) / max(float(hist.sum()), 1.0)
    step = 1.0 / len(hist)
    out: list[float] = []
    for v in q:
        t = (int(np.searchsorted(cdf, v, side="left")) + 1) * step
        if out and t <= out[-1]:
            t = out[-1] + step
        out.append(t)
    top = 1.0
    for i in range(len(out) - 1, -1, -1):  # keep <= 1 and increasing from the top
        out[i] = min(out[i], top)
        top = out[i] - step
    return tuple(round(t, 6) for t in out)


def calibrate(detector: Any, volumes: Iterable[Any], *, specificity: float = DEFAULT_SPECIFICITY,
              grade_quantiles: Optional[Sequence[float]] = DEFAULT_GRADE_QUANTILES,
              keys: Optional[Sequence[str]] = None,
              progress: bool = False, **runner_options: Any) -> CalibrationReport:
    """Fit and set ``detector.options.calibration`` (and, unless ``grade_quantiles`` is None, its grading thresholds)
    from normal-only studies.

    Args:
        detector: the :class:`~medad.model.detector.AnomalyDetector` (its adapters as they will be used).
        volumes: the normal studies, ``MetaTensor [1, X, Y, Z]`` each (e.g. ``medad.io.load_series``), or callables
            returning one (loaded one at a time).
        specificity: target specificity of the operating point (needs at least ``1 / (1 - specificity) - 1``
            studies: 19 for 95 %).
        grade_quantiles: voxel quantiles of the normal maps that become the grading thresholds; None keeps the
            detector's thresholds.
        keys: anonymous names of the studies for the report (default ``study0001``...).
        progress: tqdm bar.
        runner_options: :class:`~medad.inference.VolumeRunner` settings (``axis``, ``intensity``, ``top_k``,
            ``view``, ...): the calibration only applies to runs with the same settings.

    Returns:
        :class:`CalibrationReport`.
    """
    from ..inference import VolumeRunner
    from ..inference.provenance import adapters_digest, runner_settings

    detector.options.calibration = None  # score raw
    runner = VolumeRunner(detector, **runner_options)
    vol_scores: list[float] = []
    slice_scores: list[np.ndarray] = []
    modalities: list[str] = []
    hist = np.zeros(_BINS, dtype=np.int64)
    items = list(volumes)
    names = list(keys) if keys is not None else [f"study{i + 1:04d}" for i in range(len(items))]
    if len(names) != len(items):
        raise ValueError(f"{len(names)} keys for {len(items)} volumes")
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="normal studies", unit="study")
    for item in items:
        vol = item() if callable(item) else item
        res = runner.run(vol)
        keep = ~res.skipped
        if not keep.any():
            log.warning("a calibration study has no scored slice (background only): its volume score is 0")
        vol_scores.append(float(res.raw_volume_score))
        modalities.append(str(getattr(vol, "meta", {}).get("modality", "") or ""))
        slice_scores.append(np.asarray(res.raw_slice_scores)[keep])
        if grade_quantiles is not None and keep.any():
            amap = res.anomaly_map[0].detach().cpu().numpy()
            vals = np.compress(keep, amap, axis=res.source_dim) if res.source_dim is not None else amap
            hist += np.histogram(np.clip(vals, 0.0, 1.0), bins=_BINS, range=(0.0, 1.0))[0]
    settings = runner_settings(runner)
    settings["adapters_sha256"] = adapters_digest(detector)
    settings["backbone_sha256"] = str(detector.metadata.get("backbone_sha256", "") or "")
    n_images = int(sum(s.size for s in slice_scores))
    if n_images == 0:
        raise ValueError("no scored slice in the calibration studies")
    cal = Calibration.fit(vol_scores, slice_scores, specificity=specificity, settings=settings,
                          grade_quantiles=tuple(grade_quantiles or ()), modalities=modalities)
    if grade_quantiles is not None:
        detector.options.thresholds = fit_grade_thresholds(hist, grade_quantiles)
    detector.options.calibration = cal
    log.info("calibrated on %d normal studies: operating point %s", cal.n_studies, cal.summary())
    return CalibrationReport(cal, tuple(detector.options.thresholds), vol_scores, names, n_images)


def calibrate_inputs(detector: Any, inputs: Sequence[str], **kwargs: Any) -> CalibrationReport:
    """:func:`calibrate` on every volume under ``inputs`` (folders/files: :func:`medad.io.find_volumes`), loaded one
    at a time; the report names them ``study0001``... in :func:`~medad.io.find_volumes` order (no paths)."""
    from ..io import find_volumes, load_series

    items = find_volumes(list(inputs))
    return calibrate(detector, [lambda it=it: load_series(it["series"]) for it in items], **kwargs)


def calibrate_adapters(adapters: Optional[str], inputs: Sequence[str], out: str, *, backbone: Optional[str] = None,
                       weights: Optional[str] = None, device: str = "cpu", precision: str = "auto",
                       extra: Optional[dict] = None, **kwargs: Any) -> CalibrationReport:
    """Load a detector (:func:`medad.load_detector`), :func:`calibrate_inputs` it on the normal studies under
    ``inputs`` and save it with its calibration as a checkpoint ``out`` (the one checkpoint format; the backbone
    weights are stored too when the source checkpoint stored them, as the demo model does). ``extra`` goes to the
    checkpoint's provenance next to the calibration summary."""
    import medad

    from ..checkpoints import read_checkpoint, save_checkpoint
    from ..factory import _resolve_adapters

    src = _resolve_adapters(adapters)
    with_backbone = bool(src is not None and (read_checkpoint(src).get("medad") or {}).get("visual_state_dict"))
    det = medad.load_detector(backbone=backbone, weights=weights, adapters=adapters, device=device,
                              precision=precision)
    report = calibrate_inputs(det, inputs, **kwargs)
    save_checkpoint(det, out, extra={**(extra or {}), "calibration": report.summary()},
                    include_backbone=with_backbone)
    return report
