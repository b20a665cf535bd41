"""Streaming 2D slices of a 3D volume in RAS orientation, without reorienting (copying) the volume.

``Orientation(axcodes="RAS")`` only permutes and flips axes (it never resamples, also for oblique affines: it picks
the closest axes). :class:`RASSlicer` computes that permutation/flip exactly as MONAI does and applies it to one
*batch* of slices at a time, both ways:

* ``read(src, start, stop)`` returns the RAS slices ``start:stop`` along the chosen axis as ``[B, U, V]``
  (``U, V`` = the two remaining RAS axes in order), identical to ``Orientation("RAS")(vol)[0]`` sliced there;
* ``write(dst, start, stop, maps)`` puts ``[B, U, V]`` maps back into an array in the *source* voxel order.

So the only full-size array besides the input is the output the caller preallocates. After RAS, the slice axes
are: sagittal = spatial dim 0, coronal = 1, axial = 2 (see ecosystem notes 0.8).

2D views: CLIP sees a slice as a picture, so the in-plane layout matters. ``VIEWS`` maps a name to a pair of
functions ``(to_view, from_view)`` acting on the last two dims of ``[..., U, V]`` RAS slices:

* ``"ras"``: the RAS array as is (rows = first in-plane RAS axis);
* ``"radiological"``: the usual viewer display: axial with anterior up and the patient's right on the image left,
  coronal/sagittal with superior up (sagittal: anterior on the left). ``to_view == from_view`` (an involution).
* ``"brats_png"``: the layout of ``np.rot90`` of an LPS-stored BraTS axial slice (what
  ``../shared/data/brats2015_subset/make_slices.py`` wrote): radiological left/right with posterior up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import nibabel as nib
import numpy as np
import torch

__all__ = ["AXES", "VIEWS", "resolve_axis", "ras_orientation", "RASSlicer"]

#: slice axis name -> spatial dim of a RAS-oriented ``[C, X, Y, Z]`` volume.
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

_LPS_LABELS = (("R", "L"), ("A", "P"), ("I", "S"))


def _radiological(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2).flip(-1, -2)


def _png_to(x: torch.Tensor) -> torch.Tensor:  # view[r, c] = ras[U-1-c, r]
    return x.transpose(-1, -2).flip(-1)


def _png_from(v: torch.Tensor) -> torch.Tensor:
    return v.flip(-1).transpose(-1, -2)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "ras": (_identity, _identity),
    "radiological": (_radiological, _radiological),
    "brats_png": (_png_to, _png_from),
}


def resolve_axis(axis: str | int) -> int:
    """``"axial"|"coronal"|"sagittal"`` or ``0|1|2`` -> RAS spatial dim."""
    if isinstance(axis, str):
        key = axis.strip().lower()
        if key not in AXES:
            raise ValueError(f"unknown slice axis {axis!r}; use one of {list(AXES)} or a RAS spatial dim 0, 1, 2")
        return AXES[key]
    if int(axis) not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2 (RAS spatial dim); got {axis}")
    return int(axis)


def ras_orientation(affine: np.ndarray | torch.Tensor, space: str | None = None) -> tuple[list[int], list[bool]]:
    """Axis permutation and flips that ``monai.transforms.Orientation(axcodes="RAS")`` applies to a 3D volume.

    Args:
        affine: the 4x4 voxel-to-world affine of the source volume (MetaTensor ``.affine``).
        space: ``meta["space"]``; ``"LPS"`` means the affine is in LPS (MONAI then uses LPS labels).

    Returns:
        ``(perm, flips)``: RAS axis ``j`` is source spatial axis ``perm[j]``, reversed when ``flips[j]``.
    """
    aff = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine for a 3D volume; got shape {aff.shape}")
    ras_labels = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel's default
    labels = _LPS_LABELS if (space is not None and str(space).upper() == "LPS") else ras_labels
    src = nib.orientations.io_orientation(aff)
    dst = nib.orientations.axcodes2ornt("RAS", labels=labels)
    ornt = nib.orientations.ornt_transform(src, dst)  # row i: (target axis of source axis i, +1/-1)
    perm = [int(i) for i in np.argsort(ornt[:, 0])]
    flips = [bool(ornt[perm[j], 1] == -1) for j in range(3)]
    return perm, flips


class RASSlicer:
    """Read/write batches of RAS-ordered 2D slices of a source-ordered ``[X, Y, Z]`` array (no full copies).

    Args:
        spatial_shape: the source spatial shape ``(X, Y, Z)``.
        affine: source 4x4 affine; ``space``: ``meta["space"]`` (see :func:`ras_orientation`).
        axis: slice axis, ``"axial"`` (default), ``"coronal"``, ``"sagittal"`` or a RAS spatial dim.
    """

    def __init__(self, spatial_shape: Sequence[int], affine: np.ndarray | torch.Tensor, axis: str | int = "axial",
                 space: str | None = None) -> None:
        if len(spatial_shape) != 3:
            raise ValueError(f"RASSlicer needs a 3D spatial shape; got {tuple(spatial_shape)}")
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.perm, self.flips = ras_orientation(affine, space)
        self.axis = resolve_axis(axis)
        self.in_plane = tuple(j for j in range(3) if j != self.axis)  # RAS in-plane axes (u, v)
        self.source_dim = self.perm[self.axis]  # source spatial dim holding the slices
        self.n_slices = self.spatial_shape[self.source_dim]
        self.slice_shape = tuple(self.spatial_shape[self.perm[j]] for j in self.in_plane)  # (U, V)
        # batch dims (in source order) -> (slice, u, v)
        self._fwd = (self.source_dim, self.perm[self.in_plane[0]], self.perm[self.in_plane[1]])
        self._inv = tuple(int(i) for i in np.argsort(self._fwd))

    def source_index(self, k: int | np.ndarray) -> int | np.ndarray:
        """Source slice index (along ``source_dim``) of RAS slice ``k``."""
        return (self.n_slices - 1 - k) if self.flips[self.axis] else k

    def _source_range(self, start: int, stop: int) -> tuple[int, int]:
        if not 0 <= start < stop <= self.n_slices:
            raise IndexError(f"slice range {start}:{stop} outside 0:{self.n_slices}")
        if self.flips[self.axis]:
            return self.n_slices - stop, stop - start
        return start, stop - start

    def read(self, src: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """RAS slices ``start:stop`` of ``src`` (``[X, Y, Z]`` in source order) as a new ``[B, U, V]`` tensor."""
        lo, n = self._source_range(start, stop)
        b = src.narrow(self.source_dim, lo, n).permute(self._fwd)  # views only
        dims = [0] if self.flips[self.axis] else []
        dims += [i + 1 for i, j in enumerate(self.in_plane) if self.flips[j]]
        return b.flip(dims) if dims else b.clone()

    def write(self, dst: torch.Tensor, start: int, stop: int, maps: torch.Tensor) -> None:
        """Write ``[B, U, V]`` RAS-ordered maps of slices ``start:stop`` into ``dst`` (``[X, Y, Z]``, source order)."""
        if tuple(maps.shape) != (stop - start, *self.slice_shape):
            raise ValueError(f"maps must be [{stop - start}, {self.slice_shape[0]}, {self.slice_shape[1]}]; "
                             f"got {tuple(maps.shape)}")
        lo, n = self._source_range(start, stop)
        dims = [0] if self.flips[self.axis] else []
        dims += [i + 1 for i, j in enumerate(self.in_plane) if self.flips[j]]
        m = maps.flip(dims) if dims else maps
        dst.narrow(self.source_dim, lo, n).copy_(m.permute(self._inv))
