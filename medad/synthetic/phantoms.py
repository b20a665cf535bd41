"""Deterministic synthetic CT and MR phantoms with ground-truth lesion masks.

The phantoms are built in patient (RAS, millimetre) coordinates and sampled through the voxel->RAS ``affine``, so any
orientation (flipped, oblique) gives an anatomically consistent image. Everything is a pure function of ``seed``: the
same seed gives bit-identical arrays, so sample data, tests and held-out evaluation sets can be regenerated anywhere.

Arrays are ``[X, Y, Z]`` (``X`` = image columns, ``Y`` = image rows, ``Z`` = slices), matching the ``[1, X, Y, Z]``
volumes of :mod:`medad.io`. Masks are ``uint8`` with 1 inside any lesion.

Example::

    from medad.synthetic.phantoms import make_ct_phantom, write_dicom_series
    hu, mask, affine = make_ct_phantom(seed=7)                   # [128,128,32] float32 HU, uint8, 4x4 RAS
    files = write_dicom_series(hu, affine, "out/ct_seed7", seed=7)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .dicom_series import write_dicom_series  # re-exported: the phantom -> DICOM series step

__all__ = ["Lesion", "default_affine", "head_mask", "make_ct_phantom", "make_mr_phantom", "place_lesions",
           "write_dicom_series"]

# DICOM's usual axial layout: columns run to patient left, rows run posterior (LPS index axes) -> RAS diag(-, -, +).
_AXIAL_SIGNS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Lesion:
    """One spherical lesion: centre in RAS mm, radius in mm, intensity change (HU for CT, a.u. for MR)."""

    center: tuple[float, float, float]
    radius: float
    contrast: float


def default_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Axial voxel->RAS affine (columns to patient left, rows posterior, slices superior) centred on the origin.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: ``(sx, sy, sz)`` millimetres.

    Returns:
        ``[4, 4]`` float64 affine.
    """
    aff = np.eye(4)
    aff[:3, :3] = np.diag(_AXIAL_SIGNS * np.asarray(spacing, dtype=float))
    aff[:3, 3] = -aff[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return aff


def _world_grid(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """RAS mm coordinates of every voxel centre, ``[3, X, Y, Z]``."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return np.einsum("ij,j...->i...", affine[:3, :3], idx) + affine[:3, 3].reshape(3, 1, 1, 1)


def _ellipsoid(p: np.ndarray, center, semi_axes) -> np.ndarray:
    """Normalised ellipsoid radius (``<1`` inside) of points ``p [3, ...]``."""
    c = np.asarray(center, dtype=float).reshape(3, *([1] * (p.ndim - 1)))
    a = np.asarray(semi_axes, dtype=float).reshape(3, *([1] * (p.ndim - 1)))
    return np.sqrt((((p - c) / a) ** 2).sum(0))


def place_lesions(
    rng: np.random.Generator,
    p: np.ndarray,
    allowed: np.ndarray,
    n_lesions: int,
    radius_mm: tuple[float, float],
    contrasts: list[float],
    spacing: np.ndarray,
) -> list[Lesion]:
    """Pick ``n_lesions`` non-overlapping spheres whose whole volume lies inside ``allowed``.

    Args:
        rng: random generator (the only source of randomness).
        p: ``[3, X, Y, Z]`` RAS mm coordinates of voxels.
        allowed: ``[X, Y, Z]`` bool, tissue where lesions may sit.
        n_lesions: how many lesions.
        radius_mm: ``(min, max)`` radius in mm.
        contrasts: one intensity change per lesion.
        spacing: voxel sizes (mm), used to erode ``allowed`` by the radius.

    Returns:
        The lesions; fewer than ``n_lesions`` only if the tissue is too small (then a ``ValueError`` is raised).
    """
    lesions: list[Lesion] = []
    for i in range(n_lesions):
        for _ in range(400):
            r = float(rng.uniform(*radius_mm))
            steps = np.maximum(np.round((r + 1.5) / spacing).astype(int), 1)
            inner = ndimage.binary_erosion(allowed, structure=np.ones(2 * steps + 1, bool), border_value=0)
            cand = np.argwhere(inner)
            if len(cand) == 0:
                continue
            v = cand[rng.integers(len(cand))]
            c = p[:, v[0], v[1], v[2]]
            if all(np.linalg.norm(c - np.asarray(o.center)) > r + o.radius + 4.0 for o in lesions):
                lesions.append(Lesion(tuple(float(x) for x in c), r, float(contrasts[i])))
                break
        else:
            raise ValueError(f"could not place lesion {i + 1} of {n_lesions}: tissue too small for radius {radius_mm} mm")
    return lesions


def _paint_lesions(p: np.ndarray, image: np.ndarray, lesions: list[Lesion], edge_mm: float = 1.0):
    """Add lesions to ``image`` in place with a soft edge; return the binary mask (distance <= radius)."""
    mask = np.zeros(image.shape, np.uint8)
    for les in lesions:
        d = np.sqrt(((p - np.asarray(les.center).reshape(3, 1, 1, 1)) ** 2).sum(0))
        profile = np.clip((les.radius - d) / edge_mm + 0.5, 0.0, 1.0)
        image += les.contrast * profile
        mask[d <= les.radius] = 1
    return mask


def _smooth_noise(rng: np.random.Generator, shape, sigma: float, corr_vox: float = 0.7) -> np.ndarray:
    """Gaussian noise with a little in-plane correlation, rescaled to standard deviation ``sigma``."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(corr_vox, corr_vox, 0))
    return n * (sigma / max(float(n.std()), 1e-6))


def _head_shells(p: np.ndarray, s: float):
    """Nested head ellipsoids (scale ``s``), <1 inside: head, skull, CSF, brain, white matter, ventricles."""
    shells = [_ellipsoid(p, (0, 0, 0), (a * s, b * s, c * s))
              for a, b, c in ((72, 92, 100), (68, 88, 96), (64, 84, 92), (62, 82, 90), (54, 74, 82))]
    vent = np.minimum(_ellipsoid(p, (9 * s, 4 * s, 12 * s), (6 * s, 22 * s, 12 * s)),
                      _ellipsoid(p, (-9 * s, 4 * s, 12 * s), (6 * s, 22 * s, 12 * s)))
    return (*shells, vent)


def _ct_head(p: np.ndarray, s: float):
    """CT head anatomy in HU (scale ``s``); returns image and the parenchyma where lesions may go."""
    head, skull_out, _, brain, white, vent = _head_shells(p, s)
    img = np.full(head.shape, -1000.0)
    img[head < 1] = 35.0           # scalp
    img[skull_out < 1] = 900.0     # skull
    img[brain < 1] = 38.0          # grey matter rim
    img[white < 1] = 28.0          # white matter
    img[(vent < 1) & (brain < 1)] = 6.0  # CSF
    parenchyma = (white < 1) & (vent > 1.3)
    return img, parenchyma


def _ct_abdomen(p: np.ndarray, s: float):
    """CT abdomen anatomy in HU (scale ``s``); lesions go in the liver."""
    body = _ellipsoid(p, (0, 0, 0), (160 * s, 115 * s, 1e4))
    muscle = _ellipsoid(p, (0, 0, 0), (148 * s, 103 * s, 1e4))
    liver = _ellipsoid(p, (55 * s, 15 * s, 0), (72 * s, 62 * s, 90 * s))   # patient right (+x in RAS)
    spleen = _ellipsoid(p, (-85 * s, -20 * s, 0), (28 * s, 40 * s, 50 * s))
    kidneys = np.minimum(_ellipsoid(p, (60 * s, -55 * s, 0), (22 * s, 30 * s, 45 * s)),
                         _ellipsoid(p, (-60 * s, -55 * s, 0), (22 * s, 30 * s, 45 * s)))
    aorta = _ellipsoid(p, (-5 * s, -35 * s, 0), (11 * s, 11 * s, 1e4))
    spine = _ellipsoid(p, (0, -70 * s, 0), (18 * s, 18 * s, 1e4))
    img = np.full(body.shape, -1000.0)
    img[body < 1] = -100.0         # subcutaneous fat
    img[muscle < 1] = 45.0         # muscle / bowel soft tissue
    img[liver < 1] = 60.0
    img[spleen < 1] = 50.0
    img[kidneys < 1] = 35.0
    img[aorta < 1] = 45.0
    img[spine < 1] = 700.0
    return img, (liver < 1) & (kidneys > 1.2) & (spleen > 1.2)


def make_ct_phantom(
    seed: int,
    shape: tuple[int, int, int] = (128, 128, 32),
    n_lesions: int = 3,
    *,
    region: str = "head",
    spacing: tuple[float, float, float] | None = None,
    affine: np.ndarray | None = None,
    noise_hu: float = 4.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic CT with round hyper- and hypodense lesions.

    Lesions alternate hyperdense (+45..+75 HU, haemorrhage-like) and hypodense (-30..-22 HU, infarct/metastasis-like),
    starting with a random kind; radii 5..10 mm (head) or 7..14 mm (abdomen, in the liver). Values are whole HU so
    that storing them with RescaleSlope 1 / RescaleIntercept -1024 is lossless.

    Args:
        seed: random seed (anatomy scale, lesion positions/sizes/contrast, noise).
        shape: ``(X, Y, Z)`` voxels.
        n_lesions: number of lesions (0 gives a normal phantom).
        region: ``"head"`` or ``"abdomen"``.
        spacing: voxel size in mm; default ``(1.8, 1.8, 4.0)`` head, ``(2.8, 2.8, 5.0)`` abdomen.
        affine: voxel->RAS ``[4, 4]``; overrides ``spacing`` (use it for oblique/flipped geometries).
        noise_hu: standard deviation of the (slightly correlated) noise in HU.

    Returns:
        ``(hu [X,Y,Z] float32, lesion_mask [X,Y,Z] uint8, affine [4,4] float64 RAS)``.
    """
    if region not in ("head", "abdomen"):
        raise ValueError(f"region must be 'head' or 'abdomen', got {region!r}")
    rng = np.random.default_rng(seed)
    if affine is None:
        spacing = spacing or ((1.8, 1.8, 4.0) if region == "head" else (2.8, 2.8, 5.0))
        affine = default_affine(shape, spacing)
    affine = np.asarray(affine, dtype=np.float64)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    p = _world_grid(shape, affine)
    scale = float(rng.uniform(0.93, 1.03))
    img, allowed = (_ct_head if region == "head" else _ct_abdomen)(p, scale)
    kinds = np.roll(np.arange(n_lesions) % 2 == 0, int(rng.integers(2)))
    contrasts = [float(rng.uniform(45, 75)) if k else float(rng.uniform(-30, -22)) for k in kinds]
    radius = (5.0, 10.0) if region == "head" else (7.0, 14.0)
    lesions = place_lesions(rng, p, allowed, n_lesions, radius, contrasts, vox)
    img = ndimage.gaussian_filter(img, sigma=0.6)  # partial volume at tissue edges
    mask = _paint_lesions(p, img, lesions)
    img += _smooth_noise(rng, shape, noise_hu)
    hu = np.clip(np.round(img), -1024, 3071).astype(np.float32)
    return hu, mask, affine


def make_mr_phantom(
    seed: int,
    shape: tuple[int, int, int] = (128, 128, 32),
    n_lesions: int = 3,
    *,
    spacing: tuple[float, float, float] = (1.7, 1.7, 4.0),
    affine: np.ndarray | None = None,
    noise: float = 15.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic FLAIR-like brain MR with bright white-matter lesions.

    Grey matter ~520, white matter ~420, CSF dark (~60), skull dark, scalp ~300 (arbitrary units); lesions are
    +300..+450 brighter than white matter, radius 4..9 mm. A smooth multiplicative bias field (+-8 %) and Rician
    noise make it look like a magnitude image. Values are rounded to integers (lossless as int16 NIfTI).

    Args:
        seed: random seed.
        shape: ``(X, Y, Z)`` voxels.
        n_lesions: number of lesions.
        spacing: voxel size in mm (ignored when ``affine`` is given).
        affine: voxel->RAS ``[4, 4]``.
        noise: Rician noise sigma.

    Returns:
        ``(image [X,Y,Z] float32 >= 0, lesion_mask [X,Y,Z] uint8, affine [4,4] float64 RAS)``.
    """
    rng = np.random.default_rng(seed)
    affine = np.asarray(default_affine(shape, spacing) if affine is None else affine, dtype=np.float64)
    vox = np.linalg.norm(affine[:3, :3], axis=0)
    p = _world_grid(shape, affine)
    s = float(rng.uniform(0.93, 1.03))
    head, skull, csf, brain, white, vent = _head_shells(p, s)
    img = np.zeros(shape)
    img[head < 1] = 300.0
    img[skull < 1] = 30.0
    img[csf < 1] = 60.0
    img[brain < 1] = 520.0
    img[white < 1] = 420.0
    img[(vent < 1) & (brain < 1)] = 60.0
    contrasts = [float(rng.uniform(300, 450)) for _ in range(n_lesions)]
    lesions = place_lesions(rng, p, (white < 1) & (vent > 1.3), n_lesions, (4.0, 9.0), contrasts, vox)
    img = ndimage.gaussian_filter(img, sigma=0.7)
    mask = _paint_lesions(p, img, lesions, edge_mm=1.5)
    q = p / 100.0
    coef = rng.uniform(-0.08, 0.08, size=3)
    img *= 1.0 + coef[0] * q[0] + coef[1] * q[1] + coef[2] * q[0] * q[1]
    n1, n2 = rng.standard_normal((2, *shape)) * noise
    img = np.sqrt((img + n1) ** 2 + n2**2)
    return np.round(img).astype(np.float32), mask, affine


def head_mask(image: np.ndarray, modality: str) -> np.ndarray:
    """Inside the head of a phantom (the scalp and everything it encloses), filled slice by slice.

    Args:
        image: ``[X, Y, Z]`` phantom (HU for ``"CT"``, the MR phantom's units for ``"MR"``).
        modality: ``"CT"`` or ``"MR"``.

    Returns:
        ``[X, Y, Z]`` bool.
    """
    tissue = np.asarray(image) > (-500.0 if modality == "CT" else 100.0)
    return np.stack([ndimage.binary_fill_holes(tissue[..., z]) for z in range(tissue.shape[-1])], axis=-1)
