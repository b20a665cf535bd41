"""Geometry transforms that bring slices to the model's square input without cropping (array form).

open_clip's ``preprocess`` resizes the short side and centre-crops, which drops the borders of non-square slices and
misaligns a dense map. medad instead pads the in-plane axes to a square (keeps the aspect ratio, pads with the
background value 0 after intensity scaling) and, optionally, resizes the square to the model size. Both transforms are
:class:`~monai.transforms.InvertibleTransform`: ``inverse`` (or ``Invertd``) returns a map to the exact source grid.

Decision used by the volume runner: slices are padded to square here, resized to ``detector.image_size`` with the same
bicubic/antialias rule as the detector, and the maps are resized back bilinearly and un-padded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, Resize, SpatialPad
from monai.utils import TraceKeys

__all__ = ["square_pad_width", "PadToSquare", "SquareResize"]


def square_pad_width(shape: Sequence[int]) -> list[tuple[int, int]]:
    """Symmetric padding ``[(before, after), ...]`` that makes ``shape`` (the in-plane sizes) square.

    The smaller side is padded by ``d // 2`` before and ``d - d // 2`` after (MONAI ``SpatialPad`` "symmetric").
    """
    side = max(int(s) for s in shape)
    return [((side - int(s)) // 2, side - int(s) - (side - int(s)) // 2) for s in shape]


def _check_axes(spatial_axes: Sequence[int], ndim: int, name: str) -> tuple[int, int]:
    axes = tuple(int(a) for a in spatial_axes)
    if len(axes) != 2 or len(set(axes)) != 2 or not all(0 <= a < ndim for a in axes):
        raise ValueError(f"{name}: spatial_axes must be two distinct in-plane spatial axes among 0..{ndim - 1}; "
                         f"got {spatial_axes}")
    return axes  # type: ignore[return-value]


class PadToSquare(SpatialPad):
    """Pad two in-plane spatial axes to a square (symmetric, constant 0 by default); invertible.

    Args:
        spatial_axes: the two in-plane axes, counted over the spatial dims (channel excluded). ``(0, 1)`` for a 2D
            image ``[C, H, W]`` and for axial slices of a RAS volume ``[C, X, Y, Z]``.
        mode, kwargs: padding mode/values, as :class:`monai.transforms.SpatialPad`.
    """

    def __init__(self, spatial_axes: Sequence[int] = (0, 1), mode: str = "constant", lazy: bool = False,
                 **kwargs) -> None:
        super().__init__(spatial_size=-1, method="symmetric", mode=mode, lazy=lazy, **kwargs)
        self.spatial_axes = tuple(int(a) for a in spatial_axes)

    def compute_pad_width(self, spatial_shape: Sequence[int]) -> tuple[tuple[int, int]]:
        axes = _check_axes(self.spatial_axes, len(spatial_shape), type(self).__name__)
        widths = [(0, 0)] * len(spatial_shape)
        for ax, w in zip(axes, square_pad_width([spatial_shape[a] for a in axes])):
            widths[ax] = w
        return tuple([(0, 0)] + widths)  # type: ignore[return-value]


class SquareResize(InvertibleTransform):
    """Pad the in-plane axes to a square, then resize them to ``size x size`` (other axes unchanged); invertible.

    This is the "resize to the model size without cropping" step for pipelines (bundles) that feed a fixed-size
    network; the inverse undoes the resize (same interpolation) and then the padding, recovering the source shape.

    Args:
        size: output in-plane size (the detector's ``image_size``, 240).
        spatial_axes: the two in-plane spatial axes (see :class:`PadToSquare`).
        mode: interpolation; ``"bilinear"`` is promoted to ``"trilinear"`` for 3D inputs.
        pad_mode: padding mode (``"constant"`` pads with 0).
    """

    def __init__(self, size: int = 240, spatial_axes: Sequence[int] = (0, 1), mode: str = "bilinear",
                 pad_mode: str = "constant", anti_aliasing: bool = False) -> None:
        self.size = int(size)
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        self.mode = mode
        self.anti_aliasing = anti_aliasing
        self.padder = PadToSquare(self.spatial_axes, mode=pad_mode)

    def _resizer(self, spatial_ndim: int) -> Resize:
        axes = _check_axes(self.spatial_axes, spatial_ndim, type(self).__name__)
        size = [self.size if i in axes else -1 for i in range(spatial_ndim)]
        mode = "trilinear" if (self.mode == "bilinear" and spatial_ndim == 3) else self.mode
        return Resize(spatial_size=size, mode=mode, anti_aliasing=self.anti_aliasing)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``[C, *spatial]`` -> ``[C, *spatial']`` with the two in-plane sizes equal to ``size``."""
        out = self._resizer(img.ndim - 1)(self.padder(img))
        if isinstance(out, MetaTensor):  # fold the two recorded operations into one of this class
            resize_info = out.applied_operations.pop()
            pad_info = out.applied_operations.pop()
            self.push_transform(out, orig_size=pad_info.get(TraceKeys.ORIG_SIZE),
                                extra_info={"pad_info": pad_info, "resize_info": resize_info})
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        resize_info = transform[TraceKeys.EXTRA_INFO]["resize_info"]
        pad_info = transform[TraceKeys.EXTRA_INFO]["pad_info"]
        data = Resize(spatial_size=-1).inverse_transform(data, resize_info)
        data.applied_operations.append(pad_info)
        return self.padder.inverse(data)
