"""Intensity presets: CT windows and the parser for intensity specifications (``"auto"``, ``"ct:brain"``, ...)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CT_WINDOWS", "window_range", "parse_windows"]

#: CT display windows in Hounsfield units, ``name -> (width, level)``;
#: ``[level - width/2, level + width/2]`` maps to [0, 1].
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (80.0, 40.0),
    "soft_tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "liver": (150.0, 30.0),
}

WindowLike = str | tuple[float, float]


def window_range(window: WindowLike) -> tuple[float, float]:
    """Return the HU interval ``(lo, hi)`` of a window given by preset name or as ``(width, level)``.

    Names are case-insensitive; ``"soft-tissue"``/``"softtissue"`` are accepted for ``"soft_tissue"``.
    A string ``"W400L40"`` (width 400, level 40) is also accepted.
    """
    if isinstance(window, str):
        raw = window.strip().lower()
        key = raw.replace("-", "_").replace(" ", "_")
        if key == "softtissue":
            key = "soft_tissue"
        if key in CT_WINDOWS:
            width, level = CT_WINDOWS[key]
        elif raw.startswith("w") and "l" in raw[1:]:
            try:
                w_str, l_str = raw[1:].split("l", 1)
                width, level = float(w_str), float(l_str)
            except ValueError:
                raise ValueError(f"unreadable CT window {window!r}: use a preset name or 'W<width>L<level>'") from None
        else:
            raise ValueError(f"unknown CT window {window!r}; presets are {sorted(CT_WINDOWS)} (or 'W<width>L<level>')")
    else:
        if len(window) != 2:
            raise ValueError(f"a CT window must be a preset name or (width, level); got {window!r}")
        width, level = float(window[0]), float(window[1])
    if width <= 0:
        raise ValueError(f"CT window width must be > 0; got {width} in {window!r}")
    return level - width / 2.0, level + width / 2.0


def parse_windows(windows: WindowLike | Sequence[WindowLike]) -> list[tuple[float, float]]:
    """Normalise one window or a list of windows (``"brain,soft_tissue,bone"`` also works) to HU intervals."""
    if isinstance(windows, str):
        names = [w for w in windows.split(",") if w.strip()]
        return [window_range(w) for w in names]
    if len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows):
        return [window_range(tuple(windows))]  # a single (width, level) pair
    return [window_range(w) for w in windows]
