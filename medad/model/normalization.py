"""Score normalizers and the text/memory-bank fusion (spec section 4, "Fusion").

MVFA rescales each branch to [0, 1] and fuses them ``0.5 * text + 0.5 * bank``. The reference computes the min/max
over the whole test set (transductive); medad stores normalizers fitted on support/validation data with the
adapters, so a single study is scored on its own. The transductive mode is :meth:`ScoreNormalizer.fit` on the test
outputs themselves (see ``medad.evaluation.evaluate``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["BRANCHES", "ScoreNormalizer", "fuse"]

#: Raw outputs that get a normalizer: text/bank pixel maps and text/bank image scores.
BRANCHES = ("pixel_text", "pixel_bank", "image_text", "image_bank")


class ScoreNormalizer(nn.Module):
    """Min/max rescaling per branch, persisted as buffers (``low [4]``, ``high [4]``, NaN = not fitted).

    Unfitted branches fall back to their theoretical range ``[0, n_levels]`` (a sum of ``n_levels`` values in
    [0, 1]), so zero-shot maps are ``sum / n_levels`` until fitted.
    """

    def __init__(self, n_levels: int = 4) -> None:
        super().__init__()
        self.n_levels = n_levels
        self.register_buffer("low", torch.full((len(BRANCHES),), float("nan")))
        self.register_buffer("high", torch.full((len(BRANCHES),), float("nan")))

    def is_fitted(self, branch: str) -> bool:
        i = BRANCHES.index(branch)
        return bool(torch.isfinite(self.low[i]) and torch.isfinite(self.high[i]))

    def fit(self, branch: str, values: torch.Tensor) -> None:
        """Set the range of ``branch`` from observed raw ``values`` (any shape)."""
        i = BRANCHES.index(branch)
        values = values.detach().float()
        self.low[i] = values.min().to(self.low)
        self.high[i] = values.max().to(self.high)

    def range(self, branch: str) -> tuple[float, float]:
        i = BRANCHES.index(branch)
        if self.is_fitted(branch):
            return float(self.low[i]), float(self.high[i])
        return 0.0, float(self.n_levels)

    def forward(self, branch: str, values: torch.Tensor) -> torch.Tensor:
        """Rescale raw ``values`` of ``branch`` with ``(v - low) / (high - low)`` (not clamped)."""
        low, high = self.range(branch)
        return (values - low) / max(high - low, 1e-12)


def fuse(
    normalizer: ScoreNormalizer,
    text_map: torch.Tensor,
    text_score: torch.Tensor,
    bank_map: Optional[torch.Tensor] = None,
    bank_score: Optional[torch.Tensor] = None,
    image_score_rule: str = "det",
    weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse raw branch outputs into the final map and score.

    Args:
        text_map: ``[B, H, W]`` raw text-branch map (sum over levels). ``bank_map`` likewise, or None (zero-shot).
        text_score: ``[B]`` raw det-branch score (sum over levels). ``bank_score`` likewise, or None.
        image_score_rule: ``"det"`` (fused det scores) or ``"map_max"`` (max of the fused map; the reference's rule
            for datasets with masks in few-shot mode).
        weight: weight of the text branch; the bank gets ``1 - weight``.

    Returns:
        ``(anomaly_maps [B, H, W] clamped to [0, 1], image_scores [B] unclamped)``.
    """
    amap = normalizer("pixel_text", text_map)
    score = normalizer("image_text", text_score)
    if bank_map is not None:
        amap = weight * amap + (1 - weight) * normalizer("pixel_bank", bank_map)
    if bank_score is not None:
        score = weight * score + (1 - weight) * normalizer("image_bank", bank_score)
    if image_score_rule == "map_max":
        score = amap.flatten(1).amax(dim=1)
    elif image_score_rule != "det":
        raise ValueError(f"image_score_rule must be 'det' or 'map_max', not {image_score_rule!r}")
    return amap.clamp(0.0, 1.0), score
