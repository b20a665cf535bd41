"""The MVFA vision model (spec section 2): a frozen open_clip ViT with multi-level residual adapters.

Adapters: each is ``fc1 = Linear(C -> D, no bias) + LeakyReLU(0.01)`` and ``fc2 = Linear(D -> C, no bias) +
LeakyReLU(0.01)`` where ``C`` is the vision width (1024 for ViT-L) and ``D`` the joint embedding size (768 for ViT-L).
The module layout (``fc1.0.weight`` / ``fc2.0.weight`` inside ``nn.Sequential``) matches the released MVFA
checkpoints, so their state dicts load without key remapping.

The forward pass is split in two so training can cache the frozen part:

* :meth:`MVFAModel.forward_prefix` runs patch embedding and the blocks up to the first adapter level. Nothing here
  ever changes during training, so its output can be computed once without gradients and cached.
* :meth:`MVFAModel.forward_levels` runs the adapters and the remaining blocks and returns the per-level bottleneck
  tokens of both branches.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["MVFAModel", "MultiLevelAdapters", "ResidualAdapter", "RESIDUAL_WEIGHTS"]

#: (stream, seg, det) weights of the residual update ``x <- 0.8 x + 0.1 seg(x) + 0.1 det(x)``.
RESIDUAL_WEIGHTS = (0.8, 0.1, 0.1)


class ResidualAdapter(nn.Module):
    """Bottleneck adapter returning both the bottleneck features and the reconstruction.

    Args:
        width: token width ``C`` of the vision transformer.
        bottleneck: joint embedding size ``D`` (the bottleneck is compared with text features).

    Shapes:
        ``x [..., C] -> (h [..., D], out [..., C])``.
    """

    def __init__(self, width: int, bottleneck: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(width, bottleneck, bias=False), nn.LeakyReLU(0.01))
        self.fc2 = nn.Sequential(nn.Linear(bottleneck, width, bias=False), nn.LeakyReLU(0.01))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc1(x)
        return h, self.fc2(h)


class MultiLevelAdapters(nn.Module):
    """The 2 x L adapters of MVFA: one segmentation and one detection adapter per level.

    ``seg_adapters`` and ``det_adapters`` are ``nn.ModuleList`` so that ``seg_adapters.state_dict()`` has the released
    checkpoint keys ``{0..L-1}.fc1.0.weight`` and ``{0..L-1}.fc2.0.weight``.
    """

    def __init__(self, width: int, bottleneck: int, n_levels: int = 4) -> None:
        super().__init__()
        self.width, self.bottleneck, self.n_levels = width, bottleneck, n_levels
        self.seg_adapters = nn.ModuleList(ResidualAdapter(width, bottleneck) for _ in range(n_levels))
        self.det_adapters = nn.ModuleList(ResidualAdapter(width, bottleneck) for _ in range(n_levels))

    def forward(self, x: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply level ``level``'s pair to tokens ``x [B, N, C]``.

        Returns:
            ``(x_new [B,N,C], seg_h [B,N,D], det_h [B,N,D])`` with
            ``x_new = 0.8 x + 0.1 seg.fc2(seg.fc1(x)) + 0.1 det.fc2(det.fc1(x))``.
        """
        w_x, w_seg, w_det = RESIDUAL_WEIGHTS
        seg_h, seg_out = self.seg_adapters[level](x)
        det_h, det_out = self.det_adapters[level](x)
        return w_x * x + w_seg * seg_out + w_det * det_out, seg_h, det_h


class MVFAModel(nn.Module):
    """Frozen open_clip ``VisionTransformer`` + :class:`MultiLevelAdapters`.

    Args:
        visual: ``open_clip`` vision tower (``clip.visual``); its parameters are frozen here.
        adapter_levels: 1-indexed blocks after which an adapter pair sits (``[6, 12, 18, 24]`` for ViT-L).
        bottleneck: adapter bottleneck width ``D`` = the joint (text) embedding size.

    Shapes:
        images ``[B, 3, S, S]`` (``S`` = working size, 240) -> tokens ``[B, N, C]`` with ``N = 1 + (S // patch)^2``
        (class token first) -> per level bottleneck tokens ``[L, B, N, D]``.
    """

    def __init__(self, visual: nn.Module, adapter_levels: Sequence[int], bottleneck: int) -> None:
        super().__init__()
        self.visual = visual
        for p in self.visual.parameters():
            p.requires_grad_(False)
        blocks = self.visual.transformer.resblocks
        self.levels = [int(v) for v in adapter_levels]
        if self.levels != sorted(set(self.levels)) or not 1 <= self.levels[0] or self.levels[-1] > len(blocks):
            raise ValueError(f"adapter_levels {self.levels} must be increasing block numbers in 1..{len(blocks)}")
        self.width = int(self.visual.conv1.out_channels)
        self.adapters = MultiLevelAdapters(self.width, bottleneck, len(self.levels))

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def train(self, mode: bool = True) -> "MVFAModel":
        """Only adapters switch mode; the backbone always stays in eval mode (no patch dropout)."""
        super().train(mode)
        self.visual.eval()
        return self

    @property
    def backbone_dtype(self) -> torch.dtype:
        """dtype of the frozen backbone's weights (fp32, or bf16 for ``precision="bf16"``); adapters stay fp32."""
        return self.visual.conv1.weight.dtype

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.conv1(images.to(self.backbone_dtype))  # [B, C, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, g*g, C]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def forward_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen part: embedding + blocks ``1..levels[0]``. ``[B,3,S,S] -> [B,N,C]`` (cacheable, no adapters)."""
        x = self._embed(images)
        for block in self.visual.transformer.resblocks[: self.levels[0]]:
            x = block(x)
        return x

    def forward_levels(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapters + remaining blocks from the output of :meth:`forward_prefix`.

        Returns:
            ``(seg_tokens, det_tokens)``, each ``[L, B, N, D]`` (class token at index 0).
        """
        blocks = self.visual.transformer.resblocks
        dtype, adapter_dtype = self.backbone_dtype, self.adapters.seg_adapters[0].fc1[0].weight.dtype
        seg, det = [], []
        x = hidden
        for k, level in enumerate(self.levels):
            if k > 0:
                x = x.to(dtype)
                for block in blocks[self.levels[k - 1]: level]:
                    x = block(x)
            x = x.to(adapter_dtype)  # adapters (and the residual update) run in fp32
            if k == len(self.levels) - 1:
                # nothing runs after the last level: its fc2 outputs are dead, skip them
                seg.append(self.adapters.seg_adapters[k].fc1(x))
                det.append(self.adapters.det_adapters[k].fc1(x))
            else:
                x, seg_h, det_h = self.adapters(x, k)
                seg.append(seg_h)
                det.append(det_h)
        return torch.stack(seg), torch.stack(det)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_levels(self.forward_prefix(images))
