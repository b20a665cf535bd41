"""Modality-aware intensity transforms (array form).

Every transform here maps intensities *linearly* from one or more intervals ``(lo, hi)`` to [0, 1] (clipped), so it
is split in two steps that callers may use separately:

* ``ranges(img) -> list[(lo, hi)]``: the statistics (fixed for CT windows, percentiles for MR/X-ray);
* ``apply_ranges(img, ranges)``: the pointwise mapping, ``[1, *spatial] -> [len(ranges), *spatial]``.

The volume runner computes ``ranges`` once on the whole volume and applies them batch by batch, so scaling a
512x512x600 CT never needs a second full-size float copy. ``__call__`` does both steps at once (the MONAI way).

Input is channel-first ``[C, *spatial]`` (numpy or torch, MetaTensor keeps its meta). With one range all channels are
mapped with it; with several ranges (e.g. three CT windows) the input must have one channel and the output has one
channel per range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from .presets import WindowLike, parse_windows

__all__ = [
    "apply_ranges",
    "get_modality",
    "RangeScale",
    "CTWindow",
    "ForegroundPercentileScale",
    "PercentileScale",
    "MinMaxScale",
    "FixedRangeScale",
    "ModalityIntensity",
    "make_intensity",
]

Range = tuple[float, float]


def apply_ranges(img: NdarrayOrTensor, ranges: Sequence[Range], clip: bool = True,
                 dtype: torch.dtype = torch.float32) -> NdarrayOrTensor:
    """Map ``img`` linearly so that each ``(lo, hi)`` becomes ``(0, 1)``.

    Args:
        img: ``[C, *spatial]``. With ``len(ranges) > 1``, ``C`` must be 1 and the result has ``len(ranges)`` channels.
            Any leading layout works for a single range (the runner passes ``[B, *spatial]`` slice batches).
        ranges: intervals; a degenerate one (``hi <= lo``, e.g. a constant foreground) maps ``x > lo`` to 1 and
            the rest to 0 (so a constant image gives 0).
        clip: clip the result to [0, 1].
        dtype: output float dtype.

    Returns:
        the same container type as ``img`` (numpy, torch or MetaTensor with its meta).
    """
    if len(ranges) == 0:
        raise ValueError("apply_ranges needs at least one (lo, hi) interval")
    x = convert_to_tensor(img, track_meta=isinstance(img, MetaTensor))
    x = x.to(dtype) if x.dtype != dtype else x
    if len(ranges) > 1 and x.shape[0] != 1:
        raise ValueError(f"{len(ranges)} intensity ranges (e.g. CT windows) need a single-channel input [1, ...]; "
                         f"got {x.shape[0]} channels. Select one channel first.")
    outs = []
    for lo, hi in ranges:
        if hi > lo:
            y = (x - lo).mul_(1.0 / (hi - lo))
            if clip:
                y = y.clamp_(0.0, 1.0)
        else:  # degenerate range (constant foreground): a step at lo; a constant image gives 0
            y = (x > lo).to(dtype)
        outs.append(y)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
    return convert_to_dst_type(out, img, dtype=dtype)[0] if not isinstance(img, torch.Tensor) else out


def get_modality(img: NdarrayOrTensor, default: str | None = None) -> str | None:
    """Modality from ``meta["modality"]`` (or the DICOM tag ``0008|0060``), upper case, else ``default``."""
    meta = getattr(img, "meta", None) or {}
    for key in ("modality", "Modality", "0008|0060", "00080060"):
        value = meta.get(key)
        if isinstance(value, (list, tuple, np.ndarray)) and len(value):
            value = value[0]
        if isinstance(value, bytes):
            value = value.decode(errors="ignore")
        if isinstance(value, str) and value.strip():
            return value.strip().upper()
    return default


def _subsample(img: NdarrayOrTensor, max_samples: int | None) -> torch.Tensor:
    """A strided (view-based) subsample of at most ~``max_samples`` voxels, flattened; never copies the full image."""
    x = torch.as_tensor(img) if isinstance(img, np.ndarray) else img
    if isinstance(x, torch.Tensor) and hasattr(x, "as_tensor"):
        x = x.as_tensor()
    n = x.numel()
    if max_samples is None or n <= max_samples:
        return x.reshape(-1)
    step = max(1, math.ceil((n / max_samples) ** (1.0 / x.ndim)))
    sub = x[tuple(slice(None, None, step) for _ in range(x.ndim))]
    return sub.reshape(-1)


class RangeScale(Transform):
    """Base class: ``__call__(img) = apply_ranges(img, self.ranges(img))``; subclasses implement ``ranges``."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, clip: bool = True, dtype: torch.dtype = torch.float32) -> None:
        self.clip = clip
        self.dtype = dtype

    @property
    def num_channels(self) -> int | None:
        """Output channels for a one-channel input (None: same as the input)."""
        return None

    def ranges(self, img: NdarrayOrTensor) -> list[Range]:
        raise NotImplementedError

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return apply_ranges(img, self.ranges(img), clip=self.clip, dtype=self.dtype)


class CTWindow(RangeScale):
    """CT window(s) in Hounsfield units to [0, 1]: ``[1, *sp] -> [n_windows, *sp]``.

    Args:
        windows: a preset name from :data:`~medad.transforms.intensity.presets.CT_WINDOWS` (``"brain"``: W80/L40,
            ``"soft_tissue"``: W400/L40, ``"lung"``: W1500/L-600, ``"bone"``: W1800/L400, ``"liver"``: W150/L30),
            ``(width, level)``, ``"W400L40"``, or a list of those (``["brain", "soft_tissue", "bone"]`` or
            ``"brain,soft_tissue,bone"``) to get one output channel per window (three windows = the RGB input).
    """

    def __init__(self, windows: WindowLike | Sequence[WindowLike] = "soft_tissue", clip: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(clip, dtype)
        self.windows = parse_windows(windows)
        if not self.windows:
            raise ValueError("CTWindow needs at least one window")

    @property
    def num_channels(self) -> int | None:
        return len(self.windows) if len(self.windows) > 1 else None

    def ranges(self, img: NdarrayOrTensor) -> list[Range]:
        return list(self.windows)


class ForegroundPercentileScale(RangeScale):
    """Percentile scaling computed inside the foreground (MR): ``[p_lower, p_upper]`` of the foreground -> [0, 1].

    Args:
        lower, upper: percentiles in [0, 100] (default 0.5 and 99.5).
        foreground: which voxels define the statistics:
            ``"auto"``: voxels above the image minimum (excludes a constant background such as 0 or the
            z-scored background of BraTS); ``"nonzero"``: voxels != 0; ``None``: all voxels; a float ``t``:
            voxels > t; or a callable ``x -> bool mask``. An empty foreground falls back to all voxels.
        max_samples: the statistics use a regular strided subsample of at most about this many voxels (exact when
            the image is smaller), so a 512x512x600 volume costs a few MB, not a full copy. None: all voxels.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5,
                 foreground: str | float | Callable[[torch.Tensor], torch.Tensor] | None = "auto",
                 clip: bool = True, max_samples: int | None = 4_000_000, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(clip, dtype)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100; got lower={lower}, upper={upper}")
        if isinstance(foreground, str) and foreground not in ("auto", "nonzero"):
            raise ValueError(f"foreground must be 'auto', 'nonzero', None, a float threshold or a callable; "
                             f"got {foreground!r}")
        self.lower, self.upper, self.foreground, self.max_samples = lower, upper, foreground, max_samples

    def _mask(self, x: torch.Tensor) -> torch.Tensor | None:
        fg = self.foreground
        if fg is None:
            return None
        if fg == "auto":
            return x > x.min()
        if fg == "nonzero":
            return x != 0
        if callable(fg):
            return torch.as_tensor(fg(x), dtype=torch.bool)
        return x > float(fg)

    def ranges(self, img: NdarrayOrTensor) -> list[Range]:
        x = _subsample(img, self.max_samples)
        if x.numel() == 0:
            raise ValueError("cannot compute intensity percentiles of an empty image")
        mask = self._mask(x)
        everything_min = float(x.min())
        if mask is not None and bool(mask.any()):
            x = x[mask]
        lo, hi = np.percentile(x.cpu().numpy().astype(np.float64), [self.lower, self.upper])
        if hi <= lo:  # constant foreground: keep it distinguishable from the background
            lo = min(lo, everything_min)
        return [(float(lo), float(hi))]


class PercentileScale(ForegroundPercentileScale):
    """Percentile scaling over the whole image (X-ray, 2D images): ``[p_lower, p_upper] -> [0, 1]``."""

    def __init__(self, lower: float = 0.5, upper: float = 99.5, clip: bool = True,
                 max_samples: int | None = 4_000_000, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(lower, upper, foreground=None, clip=clip, max_samples=max_samples, dtype=dtype)


class MinMaxScale(RangeScale):
    """Min-max scaling of the whole image to [0, 1] (a constant image gives 0)."""

    def ranges(self, img: NdarrayOrTensor) -> list[Range]:
        x = torch.as_tensor(img) if isinstance(img, np.ndarray) else img
        return [(float(x.min()), float(x.max()))]


class FixedRangeScale(RangeScale):
    """A fixed interval to [0, 1], e.g. ``(0, 255)`` for 8-bit PNG images, ``(0, 1)`` for data already scaled."""

    def __init__(self, lo: float = 0.0, hi: float = 255.0, clip: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__(clip, dtype)
        if not hi > lo:
            raise ValueError(f"FixedRangeScale needs hi > lo; got ({lo}, {hi})")
        self.lo, self.hi = float(lo), float(hi)

    def ranges(self, img: NdarrayOrTensor) -> list[Range]:
        return [(self.lo, self.hi)]


class ModalityIntensity(RangeScale):
    """Choose the intensity transform from the image modality: CT -> window(s), MR -> foreground percentiles,
    anything else (CR/DX/XA/US/PNG...) -> whole-image percentiles.

    The modality is ``modality`` when given, else ``img.meta["modality"]`` (or the DICOM tag ``0008|0060``).

    Args:
        ct: transform for CT (default :class:`CTWindow` ``"soft_tissue"``).
        mr: transform for MR (default :class:`ForegroundPercentileScale` 0.5-99.5 %).
        other: transform for any other or unknown modality (default :class:`PercentileScale` 0.5-99.5 %).
        modality: force a modality instead of reading it from the meta data.
    """

    def __init__(self, ct: RangeScale | None = None, mr: RangeScale | None = None, other: RangeScale | None = None,
                 modality: str | None = None, clip: bool = True, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(clip, dtype)
        self.ct = ct if ct is not None else CTWindow("soft_tissue", clip=clip, dtype=dtype)
        self.mr = mr if mr is not None else ForegroundPercentileScale(clip=clip, dtype=dtype)
        self.other = other if other is not None else PercentileScale(clip=clip, dtype=dtype)
        self.modality = modality

    def select(self, img: NdarrayOrTensor, modality: str | None = None) -> RangeScale:
        """The transform used for ``img`` (``modality`` overrides both the constructor value and the meta)."""
        mod = (modality or self.modality or get_modality(img) or "").upper()
        if mod == "CT":
            return self.ct
        if mod in ("MR", "MRI"):
            return self.mr
        return self.other

    def ranges(self, img: NdarrayOrTensor, modality: str | None = None) -> list[Range]:
        return self.select(img, modality).ranges(img)

    def __call__(self, img: NdarrayOrTensor, modality: str | None = None) -> NdarrayOrTensor:
        return apply_ranges(img, self.ranges(img, modality), clip=self.clip, dtype=self.dtype)


def make_intensity(spec: str | RangeScale = "auto") -> RangeScale:
    """Build an intensity transform from a short specification (the ``intensity=`` argument of the volume runner).

    ``"auto"``: :class:`ModalityIntensity`; ``"ct"``: soft-tissue window; ``"ct:brain"``;
    ``"ct:brain,soft_tissue,bone"``
    (three windows as the three channels); ``"ct:W400L40"``; ``"mr"`` (foreground 0.5-99.5 %); ``"mr:1,99"``;
    ``"percentile"`` / ``"percentile:1,99"`` (whole image); ``"minmax"``; ``"uint8"`` (0-255 -> 0-1);
    ``"none"`` (input already in [0, 1]). A :class:`RangeScale` instance is returned as is.
    """
    if isinstance(spec, RangeScale):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"intensity must be a string specification or a RangeScale transform; "
                        f"got {type(spec).__name__}")
    kind, _, arg = spec.strip().partition(":")
    kind = kind.lower()

    def _pcts(default: tuple[float, float]) -> tuple[float, float]:
        if not arg:
            return default
        try:
            lo, hi = (float(v) for v in arg.split(","))
        except ValueError:
            raise ValueError(f"intensity {spec!r}: percentiles must be written 'lower,upper', e.g. '1,99'") from None
        return lo, hi

    if kind == "auto":
        return ModalityIntensity()
    if kind == "ct":
        return CTWindow(arg or "soft_tissue")
    if kind in ("mr", "mri"):
        return ForegroundPercentileScale(*_pcts((0.5, 99.5)))
    if kind == "percentile":
        return PercentileScale(*_pcts((0.5, 99.5)))
    if kind == "minmax":
        return MinMaxScale()
    if kind == "uint8":
        return FixedRangeScale(0.0, 255.0)
    if kind == "none":
        return FixedRangeScale(0.0, 1.0)
    raise ValueError(f"unknown intensity specification {spec!r}; use 'auto', 'ct:<window>[,<window>...]', 'mr', "
                     "'percentile[:lo,hi]', 'minmax', 'uint8' or 'none'")
