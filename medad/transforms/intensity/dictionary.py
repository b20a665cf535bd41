"""Dictionary forms of :mod:`medad.transforms.intensity.array` (``Foo`` -> ``Food``), MONAI style."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform

from .array import (
    CTWindow,
    ForegroundPercentileScale,
    MinMaxScale,
    ModalityIntensity,
    PercentileScale,
    RangeScale,
)
from .presets import WindowLike

__all__ = [
    "RangeScaled",
    "CTWindowd",
    "ForegroundPercentileScaled",
    "PercentileScaled",
    "MinMaxScaled",
    "ModalityIntensityd",
]


class RangeScaled(MapTransform):
    """Apply a :class:`~medad.transforms.intensity.array.RangeScale` to every key (statistics per key)."""

    backend = RangeScale.backend

    def __init__(self, keys: KeysCollection, transform: RangeScale, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class CTWindowd(RangeScaled):
    """Dictionary form of :class:`~medad.transforms.intensity.array.CTWindow`."""

    def __init__(self, keys: KeysCollection, windows: WindowLike | Sequence[WindowLike] = "soft_tissue",
                 clip: bool = True, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, CTWindow(windows, clip=clip, dtype=dtype), allow_missing_keys)


class ForegroundPercentileScaled(RangeScaled):
    """Dictionary form of :class:`~medad.transforms.intensity.array.ForegroundPercentileScale`."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5,
                 foreground: str | float | Callable[[torch.Tensor], torch.Tensor] | None = "auto",
                 clip: bool = True, max_samples: int | None = 4_000_000, dtype: torch.dtype = torch.float32,
                 allow_missing_keys: bool = False) -> None:
        t = ForegroundPercentileScale(lower, upper, foreground, clip=clip, max_samples=max_samples, dtype=dtype)
        super().__init__(keys, t, allow_missing_keys)


class PercentileScaled(RangeScaled):
    """Dictionary form of :class:`~medad.transforms.intensity.array.PercentileScale`."""

    def __init__(self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, clip: bool = True,
                 max_samples: int | None = 4_000_000, dtype: torch.dtype = torch.float32,
                 allow_missing_keys: bool = False) -> None:
        t = PercentileScale(lower, upper, clip=clip, max_samples=max_samples, dtype=dtype)
        super().__init__(keys, t, allow_missing_keys)


class MinMaxScaled(RangeScaled):
    """Dictionary form of :class:`~medad.transforms.intensity.array.MinMaxScale`."""

    def __init__(self, keys: KeysCollection, clip: bool = True, dtype: torch.dtype = torch.float32,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, MinMaxScale(clip=clip, dtype=dtype), allow_missing_keys)


class ModalityIntensityd(RangeScaled):
    """Dictionary form of :class:`~medad.transforms.intensity.array.ModalityIntensity`.

    Args:
        modality_key: optional key of a string in the data dict holding the modality (e.g. ``"modality"`` filled by
            a DICOM index); when absent the modality comes from each image's ``meta``.
    """

    def __init__(self, keys: KeysCollection, ct: RangeScale | None = None, mr: RangeScale | None = None,
                 other: RangeScale | None = None, modality: str | None = None, modality_key: str | None = None,
                 clip: bool = True, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, ModalityIntensity(ct, mr, other, modality, clip=clip, dtype=dtype), allow_missing_keys)
        self.modality_key = modality_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        modality = d.get(self.modality_key) if self.modality_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], modality=modality if isinstance(modality, str) else None)
        return d
