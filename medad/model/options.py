"""``DetectorOptions``: every setting of an :class:`~medad.model.detector.AnomalyDetector` that is not a tensor.

The options travel with the detector's ``state_dict()`` (as its extra state) and with checkpoints (as the plain
values of :meth:`DetectorOptions.to_dict`). ``DEFAULT_THRESHOLDS`` is defined here and nowhere else, and so is the
score calibration / operating point (:class:`Calibration`, ``DetectorOptions.calibration``): fitted on normal-only
validation studies (:func:`medad.evaluation.calibration.calibrate`), stored with the adapters, applied by the volume
runner.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

import numpy as np

from .prompts import PROMPT_SET

__all__ = ["Calibration", "DEFAULT_SPECIFICITY", "DEFAULT_THRESHOLDS", "IMAGE_SCORE_RULES", "DetectorOptions"]

#: Default grading cut-offs of the anomaly map (anomaly_low, anomaly_mid, anomaly_high).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
#: ``"det"``: fused det-branch scores; ``"map_max"``: max of the fused map (see :func:`medad.model.normalization.fuse`).
IMAGE_SCORE_RULES = ("det", "map_max")
#: Default target specificity of the operating point (95 %: at most 5 % of normal studies flagged).
DEFAULT_SPECIFICITY = 0.95


@dataclass
class DetectorOptions:
    """Scoring options of a detector (plain values; assignments are checked and coerced).

    Attributes:
        object_name: name used in the prompts (e.g. ``"Brain"``); the detector's text features belong to it.
        prompt_set: name of the prompt ensemble the text features were encoded with.
        image_score_rule: ``"det"`` or ``"map_max"``.
        include_cls_in_bank: put the class token in the memory bank like the reference (off by default).
        normalize_input: apply CLIP mean/std to the input (off by default: MVFA feeds [0, 1] RGB).
        smoothing_sigma: Gaussian smoothing of the final map in pixels of the input (0 = off, as the reference).
        thresholds: increasing cut-offs in [0, 1] that grade the map (anomaly_low, mid, high).
        calibration: the :class:`Calibration` (score calibration + operating point) fitted on normal studies, or
            None (uncalibrated: raw scores, nothing flagged).
    """

    object_name: str = "Brain"
    prompt_set: str = PROMPT_SET
    image_score_rule: str = "det"
    include_cls_in_bank: bool = False
    normalize_input: bool = False
    smoothing_sigma: float = 0.0
    thresholds: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS)
    calibration: Optional["Calibration"] = None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, _coerce(name, value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DetectorOptions":
        """Options from a mapping; keys that are not options are ignored, missing ones keep their default."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (``thresholds`` as a list) for checkpoints and JSON."""
        out = asdict(self)
        out["thresholds"] = list(self.thresholds)
        out["calibration"] = None if self.calibration is None else self.calibration.to_dict()
        return out

    def update(self, **values: Any) -> "DetectorOptions":
        """Set several options in place (each one checked); returns ``self``."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown detector option(s) {unknown}; known: {sorted(names)}")
        for k, v in values.items():
            setattr(self, k, v)
        return self


def _coerce(name: str, value: Any) -> Any:
    if name in ("object_name", "prompt_set"):
        return str(value)
    if name == "image_score_rule":
        if value not in IMAGE_SCORE_RULES:
            raise ValueError(f"image_score_rule must be one of {IMAGE_SCORE_RULES}, not {value!r}")
        return str(value)
    if name in ("include_cls_in_bank", "normalize_input"):
        return bool(value)
    if name == "smoothing_sigma":
        value = float(value)
        if not value >= 0:
            raise ValueError(f"smoothing_sigma must be >= 0, not {value!r}")
        return value
    if name == "thresholds":
        values = tuple(float(t) for t in value)
        if not values or any(not 0.0 <= t <= 1.0 for t in values) or any(a >= b for a, b in zip(values, values[1:])):
            raise ValueError(f"thresholds must be strictly increasing values in [0, 1], not {list(values)}")
        return values
    if name == "calibration":
        if value is None or isinstance(value, Calibration):
            return value
        if isinstance(value, Mapping):
            return Calibration.from_dict(value)
        raise TypeError(f"calibration must be a Calibration, its dict or None, not {type(value).__name__}")
    return value


def _beta_upper(a: int, b: int, confidence: float) -> float:
    """The ``confidence`` quantile of Beta(a, b) for integers ``a, b >= 1`` (bisection on
    ``I_x(a, b) = P(Binomial(a + b - 1, x) >= a)``; exact up to 1e-9)."""
    n = a + b - 1

    def cdf(x: float) -> float:
        return sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < confidence else (lo, mid)
    return hi


def _tail_scale(ref: np.ndarray) -> float:
    spread = float(ref[-1] - ref[0]) if len(ref) > 1 else 0.0
    return max(spread / max(len(ref), 1), 1e-6)


def _percentile_score(raw, ref: np.ndarray, n: int):
    """Normal-population percentile of ``raw`` among the sorted reference ``ref`` of ``n`` normal values.

    Knots ``(u, #{ref <= u} / (n + 1))`` at the distinct reference values, linear in between; below the smallest and
    above the largest value exponential tails towards 0 and 1 (scale = reference spread / n), so the map is
    continuous, non-decreasing, strictly increasing outside the knots' ties, and stays inside (0, 1).
    """
    x = np.asarray(raw, dtype=np.float64)
    u, counts = np.unique(ref, return_counts=True)
    y = np.cumsum(counts) / (n + 1.0)
    w = _tail_scale(ref)
    out = np.interp(x, u, y)
    lo, hi = x < u[0], x > u[-1]
    out = np.where(lo, y[0] * np.exp(np.minimum((x - u[0]) / w, 0.0)), out)
    out = np.where(hi, 1.0 - (1.0 - y[-1]) * np.exp(-np.maximum((x - u[-1]) / w, 0.0)), out)
    return np.clip(out, 0.0, 1.0)


@dataclass(frozen=True)
class Calibration:
    """Score calibration and operating point, fitted on ``n_studies`` normal-only validation studies.

    **Calibrated scores** (all in [0, 1]): a volume score ``s`` is the *normal-population percentile* of the raw
    volume score, i.e. the fraction of the normal calibration studies that scored lower (``#{c_i <= raw} / (n+1)``
    at the calibration scores, linear in between, smooth tails towards 0 and 1 outside their range). Slice and 2D
    image scores are the same percentile among the normal calibration *slices* (``image_reference``).

    **Operating point** (split-conformal): with target specificity ``1 - alpha``, the threshold is the ``m``-th
    smallest raw volume score of the normal studies, ``m = ceil((n + 1) (1 - alpha))`` (needs ``n >= 1/alpha - 1``,
    e.g. 19 studies for 95 %); a study is *flagged* iff its raw volume score is above it (equivalently its calibrated
    score is above :attr:`operating_point`).

    **Per modality** (Mondrian conformal): when the calibration studies hold at least :meth:`min_studies` of a
    modality, that modality gets its own references and threshold (``by_modality``), used for studies of that
    modality (:meth:`for_modality`); others use the pooled ones. The guarantee below then holds per modality.

    **Guarantee**: if the scored study and the ``n`` calibration studies are exchangeable normal studies (same
    population, protocol and scanner mix, scored with the same model and settings), then
    ``P(flagged) <= (n + 1 - m) / (n + 1) <= alpha`` (:attr:`fpr_bound`), the probability taken over the calibration
    studies and the new one; with continuous scores the false-positive rate *given* the calibration set follows
    ``Beta(n + 1 - m, m)``, so with probability 0.95 over the draw of the calibration set it is at most
    :attr:`fpr_bound_95`. Nothing is guaranteed for abnormal studies (sensitivity) or for other populations.

    Attributes:
        volume_reference: the sorted raw volume scores of the normal calibration studies (``n_studies`` values).
        image_reference: sorted raw slice scores of those studies (quantiles, at most 1001 values).
        specificity: the target specificity ``1 - alpha``.
        settings: the volume-runner settings the raw scores were computed with (the calibration only holds for
            these; the runner does not apply it under other settings).
        grade_quantiles: when the grading thresholds were fitted too: the voxel quantiles of normal studies they are
            (e.g. ``(0.99, 0.999, 0.9999)``), else empty.
        by_modality: ``{modality: Calibration}`` fitted on the studies of each modality with enough of them.
    """

    volume_reference: tuple[float, ...]
    image_reference: tuple[float, ...]
    specificity: float = DEFAULT_SPECIFICITY
    settings: Mapping[str, Any] = field(default_factory=dict)
    grade_quantiles: tuple[float, ...] = ()
    by_modality: Mapping[str, "Calibration"] = field(default_factory=dict)

    def __post_init__(self) -> None:
        vol = tuple(sorted(float(v) for v in self.volume_reference))
        img = tuple(sorted(float(v) for v in self.image_reference))
        if not vol or not img or not all(math.isfinite(v) for v in vol + img):
            raise ValueError("a calibration needs finite volume and image reference scores")
        if not 0.0 < float(self.specificity) < 1.0:
            raise ValueError(f"specificity must be in (0, 1), not {self.specificity!r}")
        object.__setattr__(self, "volume_reference", vol)
        object.__setattr__(self, "image_reference", img)
        object.__setattr__(self, "specificity", float(self.specificity))
        object.__setattr__(self, "settings", dict(self.settings))
        object.__setattr__(self, "grade_quantiles", tuple(float(q) for q in self.grade_quantiles))
        object.__setattr__(self, "by_modality", {str(k).upper(): v if isinstance(v, Calibration) else
                                                 Calibration.from_dict(v) for k, v in dict(self.by_modality).items()})
        n, m = len(vol), self.rank
        if m > n:
            raise ValueError(f"{n} normal studies cannot give an operating point at specificity {self.specificity}: "
                             f"need at least {self.min_studies(self.specificity)} (n >= 1/alpha - 1)")

    @staticmethod
    def min_studies(specificity: float) -> int:
        """The fewest normal studies that give an operating point at ``specificity``."""
        alpha = 1.0 - float(specificity)
        return max(1, math.ceil(1.0 / alpha - 1.0 - 1e-9))

    @property
    def n_studies(self) -> int:
        return len(self.volume_reference)

    @property
    def rank(self) -> int:
        """``m = ceil((n + 1) * specificity)``: the threshold is the m-th smallest normal volume score."""
        return math.ceil((self.n_studies + 1) * self.specificity - 1e-9)

    @property
    def threshold(self) -> float:
        """The raw volume-score threshold: a study is flagged iff its raw volume score is above it."""
        return self.volume_reference[self.rank - 1]

    @property
    def operating_point(self) -> float:
        """The threshold in calibrated units: flagged iff the calibrated volume score is above it."""
        return float(self.volume_score(self.threshold))

    @property
    def fpr_bound(self) -> float:
        """``(n + 1 - m) / (n + 1)``: the marginal bound on the false-positive rate (<= 1 - specificity)."""
        return (self.n_studies + 1 - self.rank) / (self.n_studies + 1)

    @property
    def fpr_bound_95(self) -> float:
        """Bound on the false-positive rate that holds for 95 % of calibration sets (``Beta(n+1-m, m)`` quantile)."""
        return _beta_upper(self.n_studies + 1 - self.rank, self.rank, 0.95)

    def volume_score(self, raw):
        """Calibrated volume score(s) in [0, 1] of raw volume score(s) (a float for a scalar)."""
        out = _percentile_score(raw, np.asarray(self.volume_reference), self.n_studies)
        return float(out) if np.ndim(out) == 0 else out

    def image_score(self, raw):
        """Calibrated slice / 2D image score(s) in [0, 1] of raw detector image score(s)."""
        ref = np.asarray(self.image_reference)
        out = _percentile_score(raw, ref, len(ref))
        return float(out) if np.ndim(out) == 0 else out

    def flagged(self, raw_volume_score: float) -> bool:
        """True iff the raw volume score is above :attr:`threshold`."""
        return bool(float(raw_volume_score) > self.threshold)

    def for_modality(self, modality: Optional[str]) -> "Calibration":
        """The calibration of ``modality`` (``by_modality``) when there is one, else this (pooled) one."""
        return self.by_modality.get(str(modality or "").upper(), self)

    def summary(self) -> dict[str, Any]:
        """Plain values for provenance (``run.json``, DICOM): specificity, thresholds, n, bounds."""
        return {"specificity": self.specificity, "threshold_raw": self.threshold,
                "operating_point": round(self.operating_point, 6), "n_studies": self.n_studies, "rank": self.rank,
                "fpr_bound": round(self.fpr_bound, 6), "fpr_bound_95": round(self.fpr_bound_95, 6),
                "grade_quantiles": list(self.grade_quantiles),
                **({"by_modality": {k: {n: v for n, v in c.summary().items() if n != "grade_quantiles"}
                                    for k, c in sorted(self.by_modality.items())}} if self.by_modality else {})}

    def to_dict(self) -> dict[str, Any]:
        return {"volume_reference": list(self.volume_reference), "image_reference": list(self.image_reference),
                "specificity": self.specificity, "settings": dict(self.settings),
                "grade_quantiles": list(self.grade_quantiles),
                "by_modality": {k: c.to_dict() for k, c in sorted(self.by_modality.items())}}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "Calibration":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    @classmethod
    def fit(cls, volume_scores, image_scores, specificity: float = DEFAULT_SPECIFICITY,
            settings: Optional[Mapping[str, Any]] = None, grade_quantiles=(), max_image_values: int = 1001,
            modalities=None) -> "Calibration":
        """Fit on the raw volume scores of normal studies (one per study) and their raw slice scores (any number;
        reduced to ``max_image_values`` quantiles). With ``modalities`` (one per study; then ``image_scores`` is one
        array per study too), modalities with at least :meth:`min_studies` studies get their own calibration."""
        vols = np.asarray(volume_scores, dtype=np.float64).ravel()
        groups: dict[str, Calibration] = {}
        if modalities is not None:
            mods = [str(m or "").upper() for m in modalities]
            per_study = [np.asarray(s, dtype=np.float64).ravel() for s in image_scores]
            if len(mods) != len(vols) or len(per_study) != len(vols):
                raise ValueError("modalities and image_scores need one entry per study")
            for mod in sorted(set(mods) - {""}):
                idx = [i for i, m in enumerate(mods) if m == mod]
                if len(idx) >= cls.min_studies(specificity) and len(set(mods)) > 1:
                    groups[mod] = cls.fit(vols[idx], np.concatenate([per_study[i] for i in idx]), specificity,
                                          settings, grade_quantiles, max_image_values)
            image_scores = np.concatenate(per_study) if per_study else np.zeros(0)
        img = np.sort(np.asarray(image_scores, dtype=np.float64).ravel())
        if len(img) > max_image_values:
            img = np.quantile(img, np.linspace(0.0, 1.0, max_image_values))
        return cls(volume_reference=tuple(vols.tolist()), image_reference=tuple(img.tolist()), specificity=specificity,
                   settings=dict(settings or {}), grade_quantiles=tuple(grade_quantiles), by_modality=groups)
