"""``AnomalyDetector``: the MVFA model + text features + optional memory bank + normalizers + options.

This is the object every front-end uses (``medad.load_detector`` builds it). It is pure torch and its whole state is
module state: ``state_dict()`` holds the backbone, adapters, text features, normalizers, the memory bank (when
fitted) and, as extra state, the :class:`~medad.model.options.DetectorOptions`, the backbone name and the metadata.
Reading and writing files is done outside this package (``medad.checkpoints``, ``medad.weights``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .mvfa import MVFAModel
from .normalization import ScoreNormalizer, fuse
from .options import DetectorOptions
from .precision import resolve_precision
from .scoring import MemoryBank, level_maps, patch_probs

__all__ = ["AnomalyDetector", "DetectionResult", "OPENAI_MEAN", "OPENAI_STD", "FINGERPRINT_MAX_BACKBONE_VALUES"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: Backbones with at least this many values are identified in :meth:`AnomalyDetector.fingerprint` by
#: ``metadata["backbone_sha256"]`` (the verified weights file) instead of hashing a GB of weights per call.
FINGERPRINT_MAX_BACKBONE_VALUES = 50_000_000


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
        text_features: ``[D, 2]`` prompt-ensemble features (normal, abnormal) for ``options.object_name``.
        backbone: name of the backbone config (``"tiny"``, ``"ViT-L-14-336"``).
        image_size: working resolution (240).
        options: :class:`DetectorOptions` (object name, prompt set, image-score rule, bank class-token flag, input
            normalization, smoothing, thresholds); None = defaults.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (resolved for the detector's current device by
            :func:`~medad.model.precision.resolve_precision`): bf16 stores the frozen backbone's weights in bfloat16
            and runs its blocks in bf16 (CPU and CUDA); adapters, residual updates and scores stay fp32.

    Attributes:
        options: the :class:`DetectorOptions` (mutable: ``det.options.thresholds = (0.4, 0.6, 0.8)``).
        memory_bank: :class:`MemoryBank` submodule or None (zero-shot).
        normalizer: :class:`ScoreNormalizer` submodule.
        metadata: plain-data provenance (``backbone_sha256``, training provenance...); not used for scoring.
    """

    def __init__(
        self,
        model: MVFAModel,
        text_features: torch.Tensor,
        backbone: str,
        image_size: int = 240,
        options: Optional[DetectorOptions] = None,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features.float())
        self.normalizer = ScoreNormalizer(len(model.levels))
        self.memory_bank: Optional[MemoryBank]
        self.register_module("memory_bank", None)
        self.backbone = backbone
        self.image_size = int(image_size)
        self.options = DetectorOptions() if options is None else options
        self.metadata: dict = {}
        self.register_buffer("_mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), persistent=False)
        self.precision = precision  # casts the backbone (property setter)

    @property
    def precision(self) -> str:
        return "bf16" if self.model.backbone_dtype == torch.bfloat16 else "fp32"

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', not {value!r}")
        value = resolve_precision(value, self.device)
        self.model.visual.to(torch.bfloat16 if value == "bf16" else torch.float32)

    @property
    def device(self) -> torch.device:
        return self.text_features.device

    # ------------------------------------------------------------------ module state
    def get_extra_state(self) -> dict[str, Any]:
        """The non-tensor state in ``state_dict()["_extra_state"]`` (plain values, ``weights_only``-loadable)."""
        return {"backbone": str(self.backbone), "image_size": self.image_size, "options": self.options.to_dict(),
                "metadata": dict(self.metadata)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping):
            raise ValueError(f"AnomalyDetector extra state must be a dict, got {type(state).__name__}")
        if state.get("backbone") not in (None, self.backbone):
            raise ValueError(f"state was saved for backbone {state['backbone']!r}, this detector is built on "
                             f"{self.backbone!r}")
        if state.get("image_size") not in (None, self.image_size):
            raise ValueError(f"state was saved for image size {state['image_size']}, this detector works at "
                             f"{self.image_size}")
        self.options = DetectorOptions.from_dict(state.get("options") or {})
        self.metadata = dict(state.get("metadata") or {})

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # the memory bank is optional state: a state dict with ``memory_bank.*`` entries brings a bank (loaded into
        # a fresh submodule of their shape, then filled by the usual child loading), one without them has none
        seg, det = state_dict.get(prefix + "memory_bank.seg"), state_dict.get(prefix + "memory_bank.det")
        if seg is None or det is None:
            self.memory_bank = None
        else:
            self.memory_bank = MemoryBank(torch.empty(seg.shape, dtype=seg.dtype, device=self.device),
                                          torch.empty(det.shape, dtype=det.dtype, device=self.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @torch.no_grad()
    def fingerprint(self) -> str:
        """SHA-256 (hex) of everything that determines this detector's outputs.

        Hashes every tensor of ``state_dict()`` (adapters, text features, normalizers, memory bank; the backbone's
        weights too when it is small, e.g. ``tiny``; a large backbone is identified by
        ``metadata["backbone_sha256"]``, which the factory verified), and the backbone name, working size, precision
        and every option (:class:`DetectorOptions`, thresholds included). Not hashed: ``metadata`` other than the
        backbone hash, the device, the module's train/eval mode. Pure: reads the state, changes nothing.
        """
        h = hashlib.sha256()
        state = {k: v for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}
        visual = [k for k in state if k.startswith("model.visual.")]
        big = sum(state[k].numel() for k in visual) >= FINGERPRINT_MAX_BACKBONE_VALUES
        if big:
            for k in visual:
                del state[k]
        header = {"backbone": self.backbone, "image_size": self.image_size, "precision": self.precision,
                  "options": self.options.to_dict(),
                  "backbone_sha256": str(self.metadata.get("backbone_sha256")) if big else None}
        h.update(json.dumps(header, sort_keys=True).encode())
        for k in sorted(state):
            v = state[k].detach().cpu().contiguous()
            h.update(f"|{k}|{v.dtype}|{tuple(v.shape)}|".encode())
            h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ input and tokens
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` model input (bicubic resize, optional CLIP normalization)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB in [0, 1]; got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32).as_subclass(torch.Tensor)  # drop MetaTensor & co.
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp_(0.0, 1.0)
        if self.options.normalize_input:
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
                           self.options.image_score_rule)
        if self.options.smoothing_sigma > 0:
            from monai.networks.layers import GaussianFilter

            amap = GaussianFilter(2, self.options.smoothing_sigma).to(amap.device)(amap.unsqueeze(1)).squeeze(1)
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
        self.memory_bank = MemoryBank.from_tokens(torch.cat(segs, 1), torch.cat(dets, 1),
                                                  self.options.include_cls_in_bank)
        return self.memory_bank

    @torch.inference_mode()
    def fit_normalizers(self, images: torch.Tensor, batch_size: int = 16) -> None:
        """Fit the min/max of every branch on support/validation images ``[N, 3, H, W]`` (non-transductive)."""
        raw = self.predict(images, batch_size=batch_size)
        self.normalizer.fit("pixel_text", raw.level_maps.sum(1))
        self.normalizer.fit("image_text", raw.level_scores.sum(1))
        if raw.bank_maps is not None:
            self.normalizer.fit("pixel_bank", raw.bank_maps)
            self.normalizer.fit("image_bank", raw.bank_scores)
