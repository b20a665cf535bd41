"""The bundle's ``network_def``: :class:`SliceAnomalyNet`, and :func:`save_model` for ``models/model.pt``."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import torch
from torch import nn

__all__ = ["SliceAnomalyNet", "is_adapter_checkpoint", "save_model"]

log = logging.getLogger(__name__)

_EXTRA_OPTIONS = ("image_score_rule", "normalize_input", "include_cls_in_bank", "smoothing_sigma")


class SliceAnomalyNet(nn.Module):
    """The bundle's ``network_def``: an MVFA detector as a slice -> anomaly-map network.

    Args:
        backbone, weights, adapters, object_name, precision: passed to :func:`medad.load_detector` (``adapters="demo"``
            is the embedded demo model: tiny backbone, adapters trained on synthetic phantoms, NOT for clinical use;
            ``weights`` is the backbone weights file, e.g. OpenAI's ``ViT-L-14-336px.pt``).
        detector: an already built :class:`~medad.model.detector.AnomalyDetector` (the other arguments are ignored).

    Shapes:
        ``forward(x)``: ``x`` float ``[B, 3, H, W]`` RGB in [0, 1] (any ``H, W``; resized to the detector's working
        size internally) -> float32 ``[B, 1, H, W]`` fused, normalized anomaly map in [0, 1].

    ``state_dict()`` holds every tensor of the detector plus an ``_extra_state`` entry (memory bank, thresholds,
    scoring options) made of tensors and plain values, so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, backbone: Optional[str] = None, weights: Optional[str] = None,
                 adapters: Optional[str] = "demo", object_name: Optional[str] = None, precision: str = "fp32",
                 detector: Optional[nn.Module] = None) -> None:
        super().__init__()
        if detector is None:
            from ..factory import load_detector

            detector = load_detector(backbone=backbone, weights=weights, adapters=adapters, object_name=object_name,
                                     precision=precision)
        self.detector = detector

    @property
    def image_size(self) -> int:
        return int(self.detector.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``detector.predict`` runs under inference_mode; the bundle tools call forward under no_grad, and tracing
        # (ckpt_export --use_trace) needs ordinary tensors, so the batch path is called directly here.
        was_training = self.detector.training
        self.detector.eval()
        try:
            return self.detector(x).anomaly_maps.unsqueeze(1).float()
        finally:
            self.detector.train(was_training)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load either this module's ``state_dict()`` or an MVFA/medad adapter checkpoint (the bundle's
        ``models/model.pt``, see :func:`save_model`), so ``CheckpointLoader``, ``ckpt_export`` and MONAI Label's
        bundle tasks can all read ``models/model.pt``."""
        if is_adapter_checkpoint(state_dict):
            from torch.nn.modules.module import _IncompatibleKeys

            from ..checkpoints import apply_checkpoint

            apply_checkpoint(self.detector, dict(state_dict), source="models/model.pt (adapter checkpoint)")
            return _IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # the memory bank and scoring options are plain attributes of the detector: keep them in the state dict
    def get_extra_state(self) -> dict[str, Any]:
        det = self.detector
        bank = det.memory_bank
        return {
            "memory_bank": None if bank is None else {"seg": bank.seg.detach().cpu(), "det": bank.det.detach().cpu()},
            "thresholds": [float(t) for t in det.thresholds],
            "object_name": str(det.object_name),
            "backbone": str(det.backbone),
            **{k: getattr(det, k) for k in _EXTRA_OPTIONS},
        }

    def set_extra_state(self, state: Any) -> None:
        from ..model.memory_bank import MemoryBank

        det = self.detector
        if not isinstance(state, Mapping):
            raise ValueError(f"SliceAnomalyNet extra state must be a dict, got {type(state).__name__}")
        if state.get("backbone") not in (None, det.backbone):
            raise ValueError(f"checkpoint was saved for backbone {state['backbone']!r} but network_def built "
                             f"{det.backbone!r}: pass the matching --backbone/--adapters overrides")
        bank = state.get("memory_bank")
        det.memory_bank = None if not bank else MemoryBank(bank["seg"], bank["det"]).to(det.device)
        if state.get("thresholds"):
            det.thresholds = tuple(float(t) for t in state["thresholds"])
        if state.get("object_name"):
            det.object_name = state["object_name"]
        for k in _EXTRA_OPTIONS:
            if k in state:
                setattr(det, k, state[k])


def is_adapter_checkpoint(state: Mapping) -> bool:
    """True for an MVFA/medad adapter checkpoint (``seg_adapters`` + ``det_adapters`` keys), not a state dict."""
    return isinstance(state, Mapping) and "seg_adapters" in state and "det_adapters" in state


def save_model(network: nn.Module, path: str | os.PathLike) -> str:
    """Write the bundle's ``models/model.pt``: the detector's medad adapter checkpoint (released MVFA keys + medad
    extras: normalizers, memory bank, thresholds, text features; the backbone too when it is the small ``tiny``
    one, so demo checkpoints are self-contained). ``network``: a :class:`SliceAnomalyNet` (DDP unwrapped) or a
    detector. The big CLIP backbone is never copied: it stays in its own file (``--backbone_weights``)."""
    net = getattr(network, "module", network)
    det = getattr(net, "detector", net)
    det.save_adapters(path, include_backbone=(det.backbone == "tiny"))
    log.info("saved the %s-backbone adapter checkpoint to %s", det.backbone, path)
    return str(path)


