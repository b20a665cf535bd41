"""Dictionary forms of :mod:`medad.transforms.spatial.array` (invertible, usable with ``monai.transforms.Invertd``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform

from .array import PadToSquare, SquareResize

__all__ = ["PadToSquared", "SquareResized"]


class _InvertibleMapd(MapTransform, InvertibleTransform):
    """Apply one invertible array transform per key; ``inverse`` calls the array transform's ``inverse``."""

    def __init__(self, keys: KeysCollection, transform: InvertibleTransform, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d


class PadToSquared(_InvertibleMapd):
    """Dictionary form of :class:`~medad.transforms.spatial.array.PadToSquare`."""

    def __init__(self, keys: KeysCollection, spatial_axes: Sequence[int] = (0, 1), mode: str = "constant",
                 allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, PadToSquare(spatial_axes, mode=mode, **kwargs), allow_missing_keys)


class SquareResized(_InvertibleMapd):
    """Dictionary form of :class:`~medad.transforms.spatial.array.SquareResize`."""

    def __init__(self, keys: KeysCollection, size: int = 240, spatial_axes: Sequence[int] = (0, 1),
                 mode: str = "bilinear", pad_mode: str = "constant", anti_aliasing: bool = False,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, SquareResize(size, spatial_axes, mode, pad_mode, anti_aliasing), allow_missing_keys)
