"""Square padding / resizing to the model input without cropping (invertible), array and dictionary forms."""

from .array import PadToSquare, SquareResize, square_pad_width
from .dictionary import PadToSquared, SquareResized
