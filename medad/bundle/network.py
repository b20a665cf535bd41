"""The bundle's ``network_def``: :class:`SliceAnomalyNet`, and :func:`save_model` for ``models/model.pt``.

``models/model.pt`` is a medad checkpoint (:mod:`medad.checkpoints`, the one format): ``SliceAnomalyNet.state_dict()``
returns that checkpoint dict and ``load_state_dict`` reads it, so a file written by ``medad train`` /
:func:`medad.checkpoints.save_checkpoint` and one written by the bundle are the same thing.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import torch
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from ..checkpoints import apply_checkpoint, checkpoint_state, is_checkpoint, save_checkpoint
from ..factory import load_detector

__all__ = ["SliceAnomalyNet", "save_model"]

log = logging.getLogger(__name__)


def _include_backbone(detector) -> bool:
    """Only the small ``tiny`` backbone travels inside ``models/model.pt`` (demo checkpoints are self-contained);
    a CLIP backbone stays in its own file (``--backbone_weights``)."""
    return detector.backbone == "tiny"


class SliceAnomalyNet(nn.Module):
    """The bundle's ``network_def``: an MVFA detector as a slice -> anomaly-map network.

    Args:
        backbone, weights, adapters, object_name, precision: passed to :func:`medad.load_detector` (``adapters="demo"``
            is the embedded demo model: tiny backbone, adapters trained on synthetic phantoms, NOT for clinical use;
            ``weights`` is the backbone weights file, e.g. OpenAI's ``ViT-L-14-336px.pt``; ``precision`` is
            ``"auto"`` (default), ``"fp32"`` or ``"bf16"``).
        device: the device the network will run on: ``precision="auto"`` is resolved for it (the detector is built
            there; the config's ``.to(@device)`` then keeps it).
        detector: an already built :class:`~medad.model.detector.AnomalyDetector` (the other arguments are ignored).

    Shapes:
        ``forward(x)``: ``x`` float ``[B, 3, H, W]`` RGB in [0, 1] (any ``H, W``; resized to the detector's working
        size internally) -> float32 ``[B, 1, H, W]`` fused, normalized anomaly map in [0, 1].

    ``state_dict()`` is the medad checkpoint dict of the detector (:func:`medad.checkpoints.checkpoint_state`: released
    MVFA adapter keys + plain-data extras, ``torch.load(weights_only=True)``-loadable), exactly what
    :func:`save_model` writes to ``models/model.pt``; ``load_state_dict`` reads it (or any MVFA/medad checkpoint), so
    ``CheckpointLoader``, ``ckpt_export`` and MONAI Label's bundle tasks all read ``models/model.pt``.
    """

    def __init__(self, backbone: Optional[str] = None, weights: Optional[str] = None,
                 adapters: Optional[str] = "demo", object_name: Optional[str] = None, precision: str = "auto",
                 detector: Optional[nn.Module] = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if detector is None:
            detector = load_detector(backbone=backbone, weights=weights, adapters=adapters, object_name=object_name,
                                     precision=precision, device=device)
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

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The detector's medad checkpoint dict (see the class docstring). Nested inside another module (a
        ``prefix`` or ``destination`` given), the usual flat entries of the detector's module state instead."""
        if args or destination is not None or prefix:
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        return checkpoint_state(self.detector, include_backbone=_include_backbone(self.detector))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a medad/MVFA checkpoint dict (``models/model.pt``, :meth:`state_dict`) with its text features and
        options, or a flat module state dict (``detector.*`` keys)."""
        if is_checkpoint(state_dict):
            apply_checkpoint(self.detector, state_dict, source="models/model.pt (medad checkpoint)", with_text=True)
            return _IncompatibleKeys([], [])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def save_model(network: nn.Module, path: str | os.PathLike) -> str:
    """Write the bundle's ``models/model.pt`` with :func:`medad.checkpoints.save_checkpoint` (released MVFA keys +
    medad extras: options, normalizers, memory bank, text features; the backbone too when it is the small ``tiny``
    one). ``network``: a :class:`SliceAnomalyNet` (DDP unwrapped) or a detector."""
    net = getattr(network, "module", network)
    det = getattr(net, "detector", net)
    save_checkpoint(det, path, include_backbone=_include_backbone(det))
    log.info("saved the %s-backbone checkpoint to %s", det.backbone, path)
    return str(path)
