"""``AnomalyDetector``: the MVFA model + cached text features + optional memory bank + normalizers.

This is the object every front-end uses (``medad.load_detector`` builds it). It is pure torch: loading and saving
files is done by ``medad.checkpoints`` and ``medad.weights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .memory_bank import MemoryBank
from .mvfa import MVFAModel
from .normalization import ScoreNormalizer, fuse
from .scoring import level_maps, patch_probs

__all__ = ["AnomalyDetector", "DetectionResult", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class DetectionResult:
    """Outputs of :meth:`AnomalyDetector.predict` for a batch of ``B`` images of size ``H x W``.

    Attributes:
        image_scores: ``[B]`` fused, normalized image score (higher = more anomalous).
        anomaly_maps: ``[B, H, W]`` fused, normalized map in [0, 1].
        level_maps: ``[B, L, H, W]`` raw text-branch abnormal probability per level (before any normalization).
        level_scores: ``[B, L]`` raw det-branch mean abnormal probability per level.
        bank_maps: ``[B, H, W]`` raw memory-bank map (sum over levels of ``1 - cos``), or None without a bank.
        bank_scores: ``[B]`` raw memory-bank image score (mean of the det-branch bank map), or None.
    """

    image_scores: torch.Tensor
    anomaly_maps: torch.Tensor
    level_maps: torch.Tensor
    level_scores: torch.Tensor
    bank_maps: Optional[torch.Tensor] = None
    bank_scores: Optional[torch.Tensor] = None

    @staticmethod
    def concat(parts: list["DetectionResult"]) -> "DetectionResult":
        def cat(name: str):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values)

        return DetectionResult(**{f: cat(f) for f in DetectionResult.__dataclass_fields__})


class AnomalyDetector(nn.Module):
    """MVFA anomaly detector.

    Args:
        model: :class:`MVFAModel` (frozen backbone + adapters).
        text_features: ``[D, 2]`` prompt-ensemble features (normal, abnormal) for ``object_name``.
        object_name: name used in the prompts (e.g. ``"Brain"``).
        backbone: name of the backbone config (``"tiny"``, ``"ViT-L-14-336"``).
        image_size: working resolution (240).
        normalize_input: apply CLIP mean/std (off by default: MVFA feeds [0, 1] RGB).
        image_score_rule: ``"det"`` or ``"map_max"`` (see :func:`medad.model.normalization.fuse`).
        include_cls_in_bank: put the class token in the memory bank like the reference (off by default).
        precision: ``"fp32"`` or ``"bf16"``: bf16 stores the frozen backbone's weights in bfloat16 and runs its blocks
            in bf16 (CPU and CUDA); adapters, residual updates and scores stay fp32.
        smoothing_sigma: Gaussian smoothing of the final map in pixels of the input (0 = off, as the reference).
    """

    def __init__(
        self,
        model: MVFAModel,
        text_features: torch.Tensor,
        object_name: str,
        backbone: str,
        image_size: int = 240,
        normalize_input: bool = False,
        image_score_rule: str = "det",
        include_cls_in_bank: bool = False,
        precision: str = "fp32",
        smoothing_sigma: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.float())
        self.normalizer = ScoreNormalizer(len(model.levels))
        self.memory_bank: Optional[MemoryBank] = None
        self.object_name = object_name
        self.backbone = backbone
        self.image_size = int(image_size)
        self.normalize_input = normalize_input
        self.image_score_rule = image_score_rule
        self.include_cls_in_bank = include_cls_in_bank
        self.precision = precision  # casts the backbone (property setter)
        self.smoothing_sigma = float(smoothing_sigma)
        self.thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
        self.metadata: dict = {}
        self.register_buffer("_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1))

    @property
    def precision(self) -> str:
        return "bf16" if self.model.backbone_dtype == torch.bfloat16 else "fp32"

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {value!r}")
        self.model.visual.to(torch.bfloat16 if value == "bf16" else torch.float32)

    @property
    def device(self) -> torch.device:
        return self.text_features.device

    def to(self, *args, **kwargs) -> "AnomalyDetector":  # keep the bank with the module
        super().to(*args, **kwargs)
        if self.memory_bank is not None:
            self.memory_bank = self.memory_bank.to(self.device)
        return self

    # ------------------------------------------------------------------ input and tokens
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` model input (bicubic resize, optional CLIP normalization)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB in [0, 1]; got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).as_subclass(torch.Tensor)  # drop MetaTensor & co.
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        if self.normalize_input:
            x = (x - self._mean) / self._std
        return x

    def tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-level bottleneck tokens ``([L,B,N,D], [L,B,N,D])`` (seg, det) in fp32."""
        seg, det = self.model(self.prepare(images))
        return seg.float(), det.float()

    # ------------------------------------------------------------------ inference
    def forward(self, images: torch.Tensor) -> DetectionResult:
        """One batch, in the caller's autograd mode (traceable; :meth:`predict` adds inference mode and chunking)."""
        size = tuple(images.shape[-2:])
        seg, det = self.tokens(images)
        lmaps = level_maps(seg, self.text_features, size).transpose(0, 1)  # [B, L, H, W]
        lscores = patch_probs(det, self.text_features).mean(-1).transpose(0, 1)  # [B, L]
        bank_maps = bank_scores = None
        if self.memory_bank is not None:
            bank_maps = self.memory_bank.maps(seg, "seg", size)
            bank_scores = self.memory_bank.maps(det, "det", size).flatten(1).mean(1)
        amap, score = fuse(self.normalizer, lmaps.sum(1), lscores.sum(1), bank_maps, bank_scores,
                           self.image_score_rule)
        if self.smoothing_sigma > 0:
            from monai.networks.layers import GaussianFilter

            amap = GaussianFilter(2, self.smoothing_sigma).to(amap.device)(amap.unsqueeze(1)).squeeze(1)
        return DetectionResult(score, amap, lmaps, lscores, bank_maps, bank_scores)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: Optional[int] = None) -> DetectionResult:
        """Score images.

        Args:
            images: float ``[B, 3, H, W]`` RGB in [0, 1], any ``H, W`` (resized to the working size internally;
                maps come back at ``H x W``).
            batch_size: split into chunks of this size (None = one batch). Results do not depend on it.
        """
        was_training = self.training
        self.eval()
        try:
            chunks = [images] if batch_size is None else list(images.split(batch_size))
            return DetectionResult.concat([self(c) for c in chunks])
        finally:
            self.train(was_training)

    def iter_tokens(self, images: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for chunk in images.split(batch_size):
            yield self.tokens(chunk)

    # ------------------------------------------------------------------ few-shot and calibration
    @torch.inference_mode()
    def fit_memory_bank(self, normal_images: torch.Tensor, batch_size: int = 16) -> MemoryBank:
        """Build the few-shot memory bank from normal images ``[N, 3, H, W]`` (already augmented if wanted)."""
        segs, dets = zip(*self.iter_tokens(normal_images, batch_size))
        self.memory_bank = MemoryBank.from_tokens(torch.cat(segs, 1), torch.cat(dets, 1), self.include_cls_in_bank)
        return self.memory_bank

    def save_adapters(self, path, extra: Optional[dict] = None, official_only: bool = False,
                      include_backbone: bool = False):
        """Save adapters + normalizers + bank + metadata (see :func:`medad.checkpoints.save_checkpoint`)."""
        from medad.checkpoints import save_checkpoint  # file I/O lives outside medad.model

        return save_checkpoint(self, path, extra, official_only=official_only, include_backbone=include_backbone)

    def clear_memory_bank(self) -> None:
        self.memory_bank = None

    @torch.inference_mode()
    def fit_normalizers(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Fit the min/max of every branch on support/validation images ``[N, 3, H, W]`` (non-transductive)."""
        raw = self.predict(images, batch_size=batch_size)
        self.normalizer.fit("pixel_text", raw.level_maps.sum(1))
        self.normalizer.fit("image_text", raw.level_scores.sum(1))
        if raw.bank_maps is not None:
            self.normalizer.fit("pixel_bank", raw.bank_maps)
            self.normalizer.fit("image_bank", raw.bank_scores)
