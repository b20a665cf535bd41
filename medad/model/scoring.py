"""Scores and maps from bottleneck tokens (spec section 4), and the few-shot memory bank of normal tokens.

The functions are pure and shared by inference and training; :class:`MemoryBank` holds the normal tokens that
:func:`bank_distance` compares with (as buffers, so it is part of the detector's ``state_dict``).

Token tensors carry the class token at index 0 (``[..., N, D]`` with ``N = 1 + g*g``); these functions drop it.
Text features are ``[D, 2]`` unit columns (normal, abnormal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPERATURE", "patch_logits", "pixel_logits", "patch_probs", "level_maps", "bank_distance",
           "upsample_patch_map", "MemoryBank"]

#: Fixed logit temperature of MVFA (not CLIP's logit_scale).
TEMPERATURE = 100.0


def _grid(n_patches: int) -> int:
    g = int(round(math.sqrt(n_patches)))
    if g * g != n_patches:
        raise ValueError(f"{n_patches} patch tokens do not form a square grid")
    return g


def patch_logits(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``[..., N, D]`` tokens -> ``[..., N-1, 2]`` logits ``100 * normalize(patch) @ text`` (class token dropped)."""
    patches = F.normalize(tokens[..., 1:, :].float(), dim=-1)
    return TEMPERATURE * patches @ text.float()


def upsample_patch_map(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[..., P, C]`` per-patch values -> ``[..., C, H, W]`` by bilinear interpolation (align_corners=True)."""
    lead, (p, c) = values.shape[:-2], values.shape[-2:]
    g = _grid(p)
    grid = values.reshape(-1, g, g, c).permute(0, 3, 1, 2)
    up = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=True)
    return up.reshape(*lead, c, *size)


def pixel_logits(tokens: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Seg-branch logits upsampled to ``size``: ``[..., N, D] -> [..., 2, H, W]`` (softmax over dim -3 gives maps)."""
    return upsample_patch_map(patch_logits(tokens, text), size)


def level_maps(tokens: torch.Tensor, text: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Abnormal probability maps ``[..., N, D] -> [..., H, W]`` (softmax of the upsampled logits).

    Computed as ``sigmoid(upsample(logit_abnormal - logit_normal))``: bilinear upsampling is linear, so this equals
    the 2-class softmax of the upsampled logits while upsampling one channel instead of two.
    """
    logits = patch_logits(tokens, text)
    gap = (logits[..., 1] - logits[..., 0]).unsqueeze(-1)
    return torch.sigmoid(upsample_patch_map(gap, size)[..., 0, :, :])


def patch_probs(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Det-branch abnormal probability per patch: ``[..., N, D] -> [..., N-1]``; its mean is the level's score."""
    return patch_logits(tokens, text).softmax(dim=-1)[..., 1]


def bank_distance(tokens: torch.Tensor, bank: torch.Tensor, chunk_elements: int = 2**25) -> torch.Tensor:
    """Few-shot distance: ``min over bank (1 - cos)`` per query patch.

    Args:
        tokens: ``[B, N, D]`` query tokens (class token at index 0, dropped).
        bank: ``[M, D]`` unit-norm memory bank tokens of one level and branch.
        chunk_elements: bound on ``B*P*m`` similarity elements held at once (memory stays flat in ``M``).

    Returns:
        ``[B, N-1]`` distances in ``[0, 2]``.
    """
    q = F.normalize(tokens[..., 1:, :].float(), dim=-1)
    bank = bank.to(q.device, torch.float32)
    step = max(1, chunk_elements // max(1, q.shape[0] * q.shape[1]))
    best = torch.full(q.shape[:-1], -2.0, device=q.device)
    for start in range(0, bank.shape[0], step):
        sim = q @ bank[start:start + step].T  # [B, P, m]
        best = torch.maximum(best, sim.amax(dim=-1))
    return 1.0 - best


class MemoryBank(nn.Module):
    """Per level and branch, the unit-norm bottleneck tokens of normal support images (buffers ``seg``, ``det``).

    Args:
        seg: ``[L, M, D]`` segmentation-branch tokens.
        det: ``[L, M, D]`` detection-branch tokens.

    The class token is excluded unless ``include_cls`` was set when building (the reference includes it by mistake;
    the flag exists to reproduce its numbers).
    """

    def __init__(self, seg: torch.Tensor, det: torch.Tensor) -> None:
        if seg.ndim != 3 or seg.shape != det.shape:
            raise ValueError(f"memory bank tensors must both be [L, M, D]; got {tuple(seg.shape)}, {tuple(det.shape)}")
        super().__init__()
        self.register_buffer("seg", seg)
        self.register_buffer("det", det)

    @classmethod
    def from_tokens(cls, seg_tokens: torch.Tensor, det_tokens: torch.Tensor, include_cls: bool = False) -> "MemoryBank":
        """Build from ``[L, B, N, D]`` tokens of the normal images (class token at index 0)."""
        start = 0 if include_cls else 1

        def flat(t: torch.Tensor) -> torch.Tensor:
            t = t[:, :, start:, :].float()
            return F.normalize(t.reshape(t.shape[0], -1, t.shape[-1]), dim=-1)

        return cls(flat(seg_tokens), flat(det_tokens))

    def __len__(self) -> int:
        return int(self.seg.shape[1])

    def maps(self, tokens: torch.Tensor, branch: str, size: tuple[int, int]) -> torch.Tensor:
        """Summed-over-levels distance map: tokens ``[L, B, N, D]`` -> ``[B, H, W]``."""
        bank = self.seg if branch == "seg" else self.det
        if bank.shape[0] != tokens.shape[0]:
            raise ValueError(f"memory bank has {bank.shape[0]} levels, tokens have {tokens.shape[0]}")
        # bilinear upsampling is linear: upsampling the level sum equals summing the upsampled levels
        total = sum(bank_distance(tokens[level], bank[level]) for level in range(tokens.shape[0]))  # [B, P]
        return upsample_patch_map(total.unsqueeze(-1), size)[..., 0, :, :]
