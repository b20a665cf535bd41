"""File writers for volumes and maps: NIfTI, ITK formats (NRRD/MHA) and PNG overlays (atomic writes).

The DICOM writers (Parametric Map, SEG) live in :mod:`medad.io.dicom_outputs`, STOW-RS in :mod:`medad.io.dicomweb`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._atomic import atomic_path
from .readers import itk_geometry

__all__ = ["heat_colormap", "save_itk_image", "save_nifti", "save_overlay_png"]


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _array_affine(volume, what: str) -> tuple[np.ndarray, np.ndarray]:
    arr = _to_numpy(volume)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"{what} must have one channel, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{what} must be [1, X, Y, Z] or [X, Y, Z], got shape {arr.shape}")
    affine = getattr(volume, "affine", None)
    if affine is None:
        raise ValueError(f"{what} has no affine: pass a monai MetaTensor")
    return arr, np.asarray(_to_numpy(affine), dtype=np.float64)


def save_nifti(volume, path: str | os.PathLike, *, dtype: np.dtype | type = np.float32,
               description: str = "") -> Path:
    """Write ``MetaTensor [1, X, Y, Z]`` as NIfTI-1 (``.nii``/``.nii.gz``) with its affine as sform and qform (atomic).

    Args:
        volume: the map/volume; its ``affine`` (voxel->RAS) goes to the header (code 1, scanner).
        path: output path; the folder is created.
        dtype: stored data type (``np.float32`` for maps, ``np.uint8`` for label maps).
        description: the header's ``descrip`` field (ASCII, cut to 79 characters), e.g. the provenance.

    Returns:
        The written path. ``medad.io.load_volume(path)`` gives back the same array and affine.
    """
    import nibabel as nib

    arr, affine = _array_affine(volume, "volume")
    img = nib.Nifti1Image(np.ascontiguousarray(arr.astype(dtype)), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def save_itk_image(volume, path: str | os.PathLike, *, dtype: np.dtype | type = np.uint8,
                   compress: bool = False) -> Path:
    """Write ``MetaTensor [1, X, Y, Z]`` with SimpleITK in any format it knows from the suffix (``.nrrd``, ``.mha``,
    ``.nii.gz``, ...), geometry from the RAS affine (stored in LPS, as ITK does), atomically.

    Args:
        volume: the image/label map; its ``affine`` (voxel -> RAS) gives spacing, direction and origin.
        path: output path; the folder is created.
        dtype: stored data type (``np.uint8`` for label maps, the default).
        compress: ask the writer to compress (NRRD gzip, MHA zlib).

    Returns:
        The written path.
    """
    import SimpleITK as sitk

    arr, affine = _array_affine(volume, "volume")
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0).astype(dtype)))
    spacing, direction, origin = itk_geometry(affine)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), bool(compress))
    return Path(path)


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """``[...]`` values in [0, 1] -> ``[..., 3]`` float RGB in [0, 1], the "jet" heat map (blue-cyan-yellow-red).

    Uses matplotlib's ``jet`` when matplotlib is installed, else the standard piecewise-linear jet formula (the two
    agree to within 0.11 per channel); no hard dependency on matplotlib.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    try:
        from matplotlib import colormaps

        return colormaps["jet"](v)[..., :3].astype(np.float32)
    except ImportError:
        return np.clip(1.5 - np.abs(4.0 * v[..., None] - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)


def _display_plane(arr2d: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Orient an ``[X, Y]`` slice for radiological display (patient right on the left; anterior or superior up)."""
    d = affine[:3, :2] / np.linalg.norm(affine[:3, :2], axis=0)   # RAS direction of X and Y
    normal_axis = int(np.argmax(np.abs(np.cross(d[:, 0], d[:, 1]))))
    # horizontal target (RAS axis, sign of increasing display column) and vertical target (increasing row)
    horiz, vert = {2: ((0, -1), (1, -1)), 1: ((0, -1), (2, -1)), 0: ((1, -1), (2, -1))}[normal_axis]
    # choose which slice axis goes horizontally: the one most aligned with the horizontal patient axis
    if abs(d[horiz[0], 0]) >= abs(d[horiz[0], 1]):
        img, col_dir, row_dir = arr2d.T, d[:, 0], d[:, 1]      # rows <- Y, columns <- X
    else:
        img, col_dir, row_dir = arr2d, d[:, 1], d[:, 0]        # rows <- X, columns <- Y
    if col_dir[horiz[0]] * horiz[1] < 0:
        img = img[:, ::-1]
    if row_dir[vert[0]] * vert[1] < 0:
        img = img[::-1, :]
    return img


def _window(arr: np.ndarray, window: tuple[float, float] | None, modality: str) -> tuple[float, float]:
    if window is not None:
        c, w = window
        return c - w / 2, c + w / 2
    if modality == "CT":
        return -160.0, 240.0  # soft-tissue window 40/400
    lo, hi = np.percentile(arr, [1, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def save_overlay_png(
    image,
    anomaly_map,
    path: str | os.PathLike,
    slices: int | Sequence[int],
    *,
    window: tuple[float, float] | None = None,
    map_range: tuple[float, float] = (0.0, 1.0),
    alpha: float = 0.6,
    columns: int | None = None,
    labels=None,
    colors: Sequence[Sequence[float]] | None = None,
) -> Path:
    """PNG of axial slices ``k`` (last axis): grayscale image + heat colormap of the map, side by side with the plain
    slice, several slices tiled into one picture (atomic write).

    With ``labels`` (a graded label map on the same grid, e.g. :func:`medad.inference.grading.grade` of the map) and
    ``colors`` (one RGB in [0, 1] per grade 1..n), the overlay shows the grades in those colours (opacity ``alpha``,
    grade 0 transparent), as the SEG shows them in a viewer, instead of the continuous heat map.

    Args:
        image: ``MetaTensor [1, X, Y, Z]`` (e.g. HU); its affine orients the display (radiological convention).
        anomaly_map: ``[1, X, Y, Z]`` on the same grid.
        path: output ``.png``.
        slices: one index or several indices along ``Z``.
        window: ``(center, width)`` display window; default soft tissue (40/400) for CT, 1-99.5 percentiles otherwise.
        map_range: map values shown from transparent (low) to opaque white-hot (high).
        alpha: maximum overlay opacity.
        columns: tiles per row (default: all slices in one row).
        labels, colors: graded overlay (see above).

    Returns:
        The written path.
    """
    from PIL import Image

    img, affine = _array_affine(image, "image")
    img = np.nan_to_num(img.astype(np.float32))
    amap = np.nan_to_num(_to_numpy(anomaly_map).astype(np.float32))
    amap = amap[0] if amap.ndim == 4 else amap
    if amap.shape != img.shape:
        raise ValueError(f"anomaly map shape {amap.shape} differs from image shape {img.shape}")
    ks = [int(slices)] if np.isscalar(slices) else [int(k) for k in slices]
    if not ks or any(not -img.shape[2] <= k < img.shape[2] for k in ks):
        raise ValueError(f"slices {ks} out of range for {img.shape[2]} slices")
    lab = None
    if labels is not None:
        lab = _to_numpy(labels)
        lab = lab[0] if lab.ndim == 4 else lab
        if lab.shape != img.shape or colors is None:
            raise ValueError(f"labels {lab.shape} must be on the image grid {img.shape} and come with colors")
        palette = np.concatenate([np.zeros((1, 3)), np.asarray(colors, dtype=np.float32).reshape(-1, 3)])
        if int(lab.max(initial=0)) >= len(palette):
            raise ValueError(f"labels reach {int(lab.max())} but only {len(palette) - 1} colours were given")
    modality = str(getattr(image, "meta", {}).get("modality", ""))
    lo, hi = _window(img, window, modality)
    m_lo, m_hi = map_range
    tiles = []
    for k in ks:
        g = np.clip((_display_plane(img[:, :, k], affine) - lo) / (hi - lo), 0, 1)[..., None].repeat(3, -1)
        if lab is not None:
            lk = _display_plane(lab[:, :, k], affine).astype(np.int64)
            a = (alpha * (lk > 0))[..., None]
            tiles.append(np.concatenate([g, (1 - a) * g + a * palette[lk]], axis=1))
            continue
        v = np.clip((_display_plane(amap[:, :, k], affine) - m_lo) / max(m_hi - m_lo, 1e-12), 0, 1)
        a = (alpha * v)[..., None]
        tiles.append(np.concatenate([g, (1 - a) * g + a * heat_colormap(v)], axis=1))
    cols = columns or len(tiles)
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    h, w = tiles[0].shape[:2]
    canvas = np.zeros((h * len(rows), w * cols, 3), np.float32)
    for r, row in enumerate(rows):
        for c, t in enumerate(row):
            canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    with atomic_path(path) as tmp:
        Image.fromarray((canvas * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)
