"""Modality-aware intensity transforms: array forms in ``array``, dictionary forms in ``dictionary``."""

from .array import (
    CTWindow,
    FixedRangeScale,
    ForegroundPercentileScale,
    MinMaxScale,
    ModalityIntensity,
    PercentileScale,
    RangeScale,
    apply_ranges,
    get_modality,
    make_intensity,
)
from .dictionary import (
    CTWindowd,
    ForegroundPercentileScaled,
    MinMaxScaled,
    ModalityIntensityd,
    PercentileScaled,
    RangeScaled,
)
from .presets import CT_WINDOWS, parse_windows, window_range
