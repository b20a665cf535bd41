"""MONAI transforms for medad: modality-aware intensity, square resizing without cropping, RAS slice streaming.

Array forms are named ``Foo``, dictionary forms ``Food`` (MONAI convention).
"""

from .intensity import (
    CT_WINDOWS,
    CTWindow,
    CTWindowd,
    FixedRangeScale,
    ForegroundPercentileScale,
    ForegroundPercentileScaled,
    MinMaxScale,
    MinMaxScaled,
    ModalityIntensity,
    ModalityIntensityd,
    PercentileScale,
    PercentileScaled,
    RangeScale,
    RangeScaled,
    apply_ranges,
    get_modality,
    make_intensity,
    parse_windows,
    window_range,
)
from .slicing import AXES, VIEWS, RASSlicer, ras_orientation, resolve_axis
from .spatial import PadToSquare, PadToSquared, SquareResize, SquareResized, square_pad_width
