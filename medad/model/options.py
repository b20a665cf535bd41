"""``DetectorOptions``: every setting of an :class:`~medad.model.detector.AnomalyDetector` that is not a tensor.

The options travel with the detector's ``state_dict()`` (as its extra state) and with checkpoints (as the plain
values of :meth:`DetectorOptions.to_dict`). ``DEFAULT_THRESHOLDS`` is defined here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .prompts import PROMPT_SET

__all__ = ["DEFAULT_THRESHOLDS", "IMAGE_SCORE_RULES", "DetectorOptions"]

#: Default grading cut-offs of the anomaly map (anomaly_low, anomaly_mid, anomaly_high).
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
#: ``"det"``: fused det-branch scores; ``"map_max"``: max of the fused map (see :func:`medad.model.normalization.fuse`).
IMAGE_SCORE_RULES = ("det", "map_max")


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
    """

    object_name: str = "Brain"
    prompt_set: str = PROMPT_SET
    image_score_rule: str = "det"
    include_cls_in_bank: bool = False
    normalize_input: bool = False
    smoothing_sigma: float = 0.0
    thresholds: tuple[float, ...] = field(default=DEFAULT_THRESHOLDS)

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
    return value
