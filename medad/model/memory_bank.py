"""Few-shot memory bank of normal bottleneck tokens (spec section 4, "Few-shot memory bank")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .scoring import bank_distance, upsample_patch_map

__all__ = ["MemoryBank"]


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
