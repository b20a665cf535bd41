"""Helpers shared by the medad.io tests (geometry builders)."""

from __future__ import annotations

import numpy as np

from medad.synthetic import default_affine

SHAPE = (48, 40, 10)  # X (columns) != Y (rows) to catch transposes


def rotation(axis: str, deg: float) -> np.ndarray:
    """3x3 rotation about a RAS axis."""
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def oblique_affine(shape=SHAPE, spacing=(1.1, 0.9, 3.0)) -> np.ndarray:
    """Axial affine rotated 20 deg about x and 12 deg about z, off-centre origin."""
    aff = default_affine(shape, spacing)
    aff[:3, :3] = rotation("x", 20) @ rotation("z", 12) @ aff[:3, :3]
    aff[:3, 3] += (5.0, -7.5, 12.25)
    return aff
