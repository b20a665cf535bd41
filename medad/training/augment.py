"""The 11 deterministic few-shot support augmentations of MVFA (spec section 5), masks following the images.

Order (index in the output, per input image): 0 identity; 1-4 rotations by -pi/8, -pi/16, +pi/16, +pi/8;
5-8 translations by (+t,+t), (-t,+t), (-t,-t), (+t,-t) with t = 0.1 in normalized grid coordinates (``affine_grid``,
where the image spans [-1, 1], so 0.1 is 5 % of the width along each axis, as in the reference); 9 horizontal flip;
10 vertical flip. Rotations and translations resample bilinearly with reflection padding; masks go through the same
resampling and are re-binarized at 0.5.

Because the augmentations are deterministic, the augmented support set (and its cached frozen features) is computed
once for the whole training run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["NUM_AUGMENTATIONS", "ROTATIONS", "TRANSLATIONS", "augment_support", "affine"]

ROTATIONS = (-math.pi / 8, -math.pi / 16, math.pi / 16, math.pi / 8)
TRANSLATIONS = ((0.1, 0.1), (-0.1, 0.1), (-0.1, -0.1), (0.1, -0.1))
NUM_AUGMENTATIONS = 1 + len(ROTATIONS) + len(TRANSLATIONS) + 2


def affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x [N,C,H,W]`` with one 2x3 affine matrix ``theta`` (normalized coordinates, reflection padding)."""
    theta = theta.to(device=x.device, dtype=torch.float32).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False).to(x.dtype)


def _rotation(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0]])


def _translation(a: float, b: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, a], [0.0, 1.0, b]])


def augment_support(
    images: torch.Tensor, masks: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expand support images 11-fold.

    Args:
        images: ``[N, C, H, W]`` float images.
        masks: optional ``[N, 1, H, W]`` binary masks (normal images: zeros).

    Returns:
        ``(images [11N, C, H, W], masks [11N, 1, H, W] or None)``, grouped by augmentation: rows
        ``a*N .. a*N+N-1`` hold augmentation ``a`` of every input (see the module docstring for the order).
    """
    if images.ndim != 4:
        raise ValueError(f"augment_support expects images [N,C,H,W], got shape {tuple(images.shape)}")
    if masks is not None and (masks.ndim != 4 or masks.shape[0] != images.shape[0]
                              or masks.shape[-2:] != images.shape[-2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}; expected [N,1,H,W]")
    thetas = [_rotation(a) for a in ROTATIONS] + [_translation(a, b) for a, b in TRANSLATIONS]
    out_i = [images] + [affine(images, t) for t in thetas] + [images.flip(-1), images.flip(-2)]
    if masks is None:
        return torch.cat(out_i), None
    m = masks.float()
    out_m = [m] + [(affine(m, t) > 0.5).float() for t in thetas] + [m.flip(-1), m.flip(-2)]
    return torch.cat(out_i), torch.cat(out_m)
