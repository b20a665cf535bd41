"""MVFA training losses (spec section 5), batched, on the same scores inference computes (``medad.model.scoring``).

Per adapter level, summed over levels:

* segmentation branch (only samples whose dataset has masks; normal images count as all-zero masks):
  MONAI ``FocalLoss(gamma=2)`` + MONAI ``DiceLoss`` on the 2-class map obtained from the upsampled pixel logits.
  Both take the logits and apply the softmax themselves (numerically stable ``log_softmax``); this is the focal and
  dice loss of the softmax map the reference computes. The focal term is summed over the 2 classes and averaged over
  pixels (the reference's per-pixel focal loss); the dice term is the abnormal channel's soft dice with smoothing 1,
  per image, averaged over images (``1 - (2 I + 1) / (sum P + sum G + 1)``, as the reference).
* detection branch: binary cross-entropy between the image score ``s = mean over patches of p_abnormal`` (a
  probability) and the image label, ``F.binary_cross_entropy(s, y)``.

  **Deliberate difference from the reference:** MVFA passes ``s`` to ``BCEWithLogitsLoss``, i.e. treats a
  probability as a logit, so its loss only sees ``sigmoid(s)`` in (0.5, 0.73) and its gradient is weak and
  saturating. ``s`` is already a probability, so the correct likelihood is plain BCE on ``s`` (clamped to
  ``[eps, 1-eps]`` and computed in float32 outside autocast). Use ``det_loss="reference"`` to get the reference's
  formulation for ablations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss
from torch import nn

from medad.model import scoring

__all__ = ["MVFALoss"]


class MVFALoss(nn.Module):
    """Sum over levels of seg (focal + dice) and det (BCE) losses.

    Args:
        seg_weight: weight of the segmentation terms.
        det_weight: weight of the detection term.
        det_loss: ``"bce"`` (correct, default) or ``"reference"`` (BCE-with-logits on the probability, as MVFA).
        eps: clamp of the image score before the log.
    """

    def __init__(self, seg_weight: float = 1.0, det_weight: float = 1.0, det_loss: str = "bce", eps: float = 1e-6):
        super().__init__()
        if det_loss not in ("bce", "reference"):
            raise ValueError(f"det_loss must be 'bce' or 'reference', got {det_loss!r}")
        self.seg_weight, self.det_weight, self.det_loss, self.eps = seg_weight, det_weight, det_loss, eps
        self.focal = FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True, reduction="none")
        self.dice = DiceLoss(
            softmax=True, to_onehot_y=True, include_background=False, smooth_nr=1.0, smooth_dr=1.0, batch=False
        )

    def seg_loss(self, seg_tokens: torch.Tensor, text: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Focal + dice summed over levels.

        Args:
            seg_tokens: ``[L, B, N, D]`` seg-branch bottleneck tokens.
            text: ``[D, 2]`` or ``[B, D, 2]`` text features.
            masks: ``[B, 1, H, W]`` binary masks.
        """
        n_levels, b = seg_tokens.shape[:2]
        size = tuple(masks.shape[-2:])
        logits = scoring.pixel_logits(seg_tokens, text, size).float()  # [L, B, 2, H, W]
        flat = logits.reshape(n_levels * b, 2, *size)
        target = masks.float().expand(n_levels, -1, -1, -1, -1).reshape(n_levels * b, 1, *size)
        focal = self.focal(flat, target).sum(dim=1).mean()  # mean over (level, image, pixel) of the 2-class sum
        dice = self.dice(flat, target)  # mean over (level, image)
        return n_levels * (focal + dice)  # sum over levels

    def det_scores(self, det_tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-level image scores ``[L, B]``: mean over patches of the abnormal probability."""
        return scoring.patch_probs(det_tokens, text).float().mean(dim=-1)

    def det_loss_fn(self, det_tokens: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """BCE of the image score vs the label, summed over levels (``det_tokens [L,B,N,D]``, ``labels [B]``)."""
        scores = self.det_scores(det_tokens, text)
        target = labels.to(scores.device, torch.float32).expand_as(scores)
        if self.det_loss == "reference":
            per_level = F.binary_cross_entropy_with_logits(scores, target, reduction="none").mean(dim=1)
        else:
            per_level = F.binary_cross_entropy(scores.clamp(self.eps, 1 - self.eps), target, reduction="none").mean(1)
        return per_level.sum()

    def forward(
        self,
        seg_tokens: torch.Tensor,
        det_tokens: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        has_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Total loss.

        Args:
            seg_tokens, det_tokens: ``[L, B, N, D]``.
            text: ``[D, 2]`` (one object) or ``[B, D, 2]`` (per-sample object, mixed-dataset batches).
            labels: ``[B]`` 0 normal / 1 abnormal.
            masks: ``[B, 1, H, W]`` or None (no seg loss).
            has_mask: ``[B]`` bool, samples that take part in the seg loss (default: all when ``masks`` is given).

        Returns:
            dict with ``loss`` (scalar to backprop), ``seg`` and ``det`` (detached scalars).
        """
        device_type = seg_tokens.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            det = self.det_loss_fn(det_tokens, text, labels)
            seg = torch.zeros((), device=seg_tokens.device)
            if masks is not None:
                sel = torch.ones(labels.shape[0], dtype=torch.bool) if has_mask is None else has_mask.bool().cpu()
                if bool(sel.any()):
                    idx = torch.nonzero(sel).flatten().to(seg_tokens.device)
                    t = text if text.ndim == 2 else text.index_select(0, idx.to(text.device))
                    # weight by the fraction of the batch with masks so the loss is a per-sample mean
                    frac = float(sel.sum()) / labels.shape[0]
                    m = masks.index_select(0, idx.to(masks.device))
                    seg = frac * self.seg_loss(seg_tokens.index_select(1, idx), t, m)
            loss = self.seg_weight * seg + self.det_weight * det
        return {"loss": loss, "seg": seg.detach(), "det": det.detach()}
