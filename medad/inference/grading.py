"""Grading: the one rule that turns a continuous anomaly map in [0, 1] into graded labels.

Grade ``k`` (``1 <= k <= len(thresholds)``) holds the voxels with ``thresholds[k-1] <= value < thresholds[k]`` (the
last grade is open-ended), grade 0 the voxels below ``thresholds[0]``. With the three default thresholds the grades
are :data:`GRADE_LABELS` (``anomaly_low``, ``anomaly_mid``, ``anomaly_high``). The thresholds come from the
detector (``detector.options.thresholds``, stored with the adapters; default
:data:`medad.model.options.DEFAULT_THRESHOLDS`) unless a caller overrides them.

The DICOM SEG, the MONAI Label label map and the grading summary of every front-end all come from :func:`grade`.

Colours: :data:`GRADE_COLORS` is the one heat ramp of the grades (gold, orange, red for low, mid, high), as sRGB and
as the DICOM CIELab value (``RecommendedDisplayCIELabValue``: L*, a*, b* scaled to 0..65535 as in PS3.3 C.10.7.1.1).
The SEG's segments, the PNG overlays and the MONAI Label app's label colours all take them from here
(:func:`grade_colors` for a number of grades other than three).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model.options import DEFAULT_THRESHOLDS

__all__ = ["GRADE_COLORS", "GRADE_LABELS", "GradeColor", "check_thresholds", "grade", "grade_colors",
           "grading_summary"]

#: Names of grades 1, 2, 3 (grade 0 is background), as segment labels and MONAI Label label names.
GRADE_LABELS: tuple[str, ...] = ("anomaly_low", "anomaly_mid", "anomaly_high")


@dataclass(frozen=True)
class GradeColor:
    """Display colour of one grade: ``rgb`` (sRGB, 0..255) and ``cielab`` (the DICOM-scaled CIELab value of the same
    colour, ``highdicom.color.CIELabColor.from_rgb(*rgb).value``, for ``RecommendedDisplayCIELabValue``)."""

    rgb: tuple[int, int, int]
    cielab: tuple[int, int, int]

    @property
    def rgb_float(self) -> tuple[float, float, float]:
        """``rgb`` scaled to [0, 1]."""
        return tuple(c / 255.0 for c in self.rgb)  # type: ignore[return-value]

    @property
    def hex(self) -> str:
        """``#rrggbb``."""
        return "#" + "".join(f"{c:02x}" for c in self.rgb)


#: The heat ramp of grades 1, 2, 3 (``anomaly_low`` gold, ``anomaly_mid`` orange, ``anomaly_high`` red), defined once:
#: the SEG's RecommendedDisplayCIELabValue, the PNG overlays and the MONAI Label app use these.
GRADE_COLORS: tuple[GradeColor, ...] = (
    GradeColor(rgb=(255, 215, 0), cielab=(56969, 32401, 55290)),
    GradeColor(rgb=(255, 140, 0), cielab=(45534, 42362, 52298)),
    GradeColor(rgb=(220, 20, 20), cielab=(30583, 50862, 46815)),
)


def grade_colors(n: int) -> tuple[GradeColor, ...]:
    """Colours of ``n`` grades on the heat ramp: :data:`GRADE_COLORS` for 3; the top ``n`` of them for 1 or 2 (the
    highest grade is always red); for more than 3, the ramp's sRGB interpolated linearly (``cielab`` then computed by
    highdicom)."""
    if n < 1:
        raise ValueError(f"need at least one grade, got {n}")
    if n <= len(GRADE_COLORS):
        return GRADE_COLORS[len(GRADE_COLORS) - n:]
    import highdicom as hd

    ramp = np.array([c.rgb for c in GRADE_COLORS], dtype=np.float64)
    pos = np.linspace(0, len(ramp) - 1, n)
    out = []
    for p in pos:
        i = min(int(p), len(ramp) - 2)
        rgb = tuple(int(round(v)) for v in ramp[i] + (p - i) * (ramp[i + 1] - ramp[i]))
        out.append(GradeColor(rgb=rgb, cielab=tuple(int(v) for v in hd.color.CIELabColor.from_rgb(*rgb).value)))
    return tuple(out)


def check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """``thresholds`` as a tuple of floats; raises ``ValueError`` unless non-empty and strictly increasing."""
    t = tuple(float(v) for v in thresholds)
    if not t or any(a >= b for a, b in zip(t, t[1:])):
        raise ValueError(f"thresholds must be a strictly increasing non-empty sequence, got {list(thresholds)}")
    return t


def grade(values: torch.Tensor | np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Graded label map of ``values`` (any shape): 0 below ``thresholds[0]``, ``k`` for
    ``thresholds[k-1] <= v < thresholds[k]``, ``len(thresholds)`` from the last threshold up.

    Returns:
        ``uint8`` array of the same shape (a tensor is read on the CPU).
    """
    t = check_thresholds(thresholds)
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if a.dtype != np.float32:
        a = a.astype(np.float64)
    # np.digitize(a, t) without its sort-based cost (~8x slower on a 512x512x300 map): count the thresholds each
    # value reaches, compared exactly as float64 (a float32 value v >= t iff v >= the smallest float32 >= t); NaN
    # gets the top grade like np.digitize
    out = np.isnan(a).view(np.uint8) * np.uint8(len(t))
    for th in t:
        out += (a >= _at_least(th, a.dtype)).view(np.uint8)
    return out


def _at_least(t: float, dtype: np.dtype):
    """The smallest value of ``dtype`` that is >= ``t``."""
    v = dtype.type(t)
    return np.nextafter(v, dtype.type(np.inf)) if float(v) < t else v


def grading_summary(graded: np.ndarray, thresholds: Sequence[float],
                    labels: Sequence[str] = GRADE_LABELS) -> dict[str, Any]:
    """Plain-data summary of a graded map: ``{"thresholds": [...], "labels": [...], "voxels": {label: count}}``
    (grade 0 counted as ``"background"``)."""
    t = check_thresholds(thresholds)
    labels = list(labels)
    if len(labels) != len(t):
        raise ValueError(f"need one label per threshold, got {len(labels)} labels and {len(t)} thresholds")
    counts = np.bincount(np.asarray(graded, dtype=np.uint8).ravel(), minlength=len(t) + 1)
    names = ["background", *labels]
    return {"thresholds": list(t), "labels": labels, "voxels": {n: int(c) for n, c in zip(names, counts)}}
