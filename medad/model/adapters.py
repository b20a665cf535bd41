"""MVFA multi-level residual adapters (spec section 2).

Each adapter is ``fc1 = Linear(C -> D, no bias) + LeakyReLU(0.01)`` and ``fc2 = Linear(D -> C, no bias) + LeakyReLU(0.01)``
where ``C`` is the vision width (1024 for ViT-L) and ``D`` the joint embedding size (768 for ViT-L). The module layout
(``fc1.0.weight`` / ``fc2.0.weight`` inside ``nn.Sequential``) matches the released MVFA checkpoints, so their state
dicts load without key remapping.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualAdapter", "MultiLevelAdapters", "RESIDUAL_WEIGHTS"]

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
