"""Adapter checkpoints: the released MVFA format and medad's superset of it.

Released MVFA format: ``{'seg_adapters': state_dict, 'det_adapters': state_dict}`` with keys
``{0..3}.fc1.0.weight [768, 1024]`` and ``{0..3}.fc2.0.weight [1024, 768]``.

medad writes the same two keys (so MVFA's own scripts can read medad checkpoints) plus a ``'medad'`` entry holding
plain data only (loadable with ``torch.load(weights_only=True)``): format version, backbone name and SHA-256, object
name, prompt set, cached text features, fitted normalizers, memory bank, thresholds, scoring options and provenance.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from . import __version__
from .model.detector import AnomalyDetector
from .model.memory_bank import MemoryBank
from .model.prompts import PROMPT_SET

__all__ = ["CheckpointError", "FORMAT_VERSION", "read_checkpoint", "apply_checkpoint", "save_checkpoint",
           "checkpoint_state"]

FORMAT_VERSION = 1
_OPTIONS = ("image_score_rule", "normalize_input", "include_cls_in_bank", "smoothing_sigma")


class CheckpointError(RuntimeError):
    """An adapter checkpoint cannot be used (wrong format or shapes)."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an adapter checkpoint with ``weights_only=True`` and check its format (not its shapes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Adapter checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"Cannot read adapter checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or not {"seg_adapters", "det_adapters"} <= set(ckpt):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an MVFA adapter checkpoint: expected keys 'seg_adapters' and "
                              f"'det_adapters', found {keys}.")
    return ckpt


def apply_checkpoint(detector: AnomalyDetector, ckpt: dict[str, Any], source: str = "<checkpoint>") -> None:
    """Load adapters (and medad extras when present) into ``detector``; shape errors name ``source``."""
    adapters = detector.model.adapters
    for branch in ("seg_adapters", "det_adapters"):
        target = getattr(adapters, branch)
        expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ckpt[branch].items()}
        if expected != got:
            diff = [f"{k}: expected {expected.get(k)}, found {got.get(k)}"
                    for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)][:3]
            raise CheckpointError(f"{source}: {branch} do not fit backbone {detector.backbone!r} "
                                  f"({'; '.join(diff)}). Was it trained for another backbone?")
        target.load_state_dict(ckpt[branch])
    extra = ckpt.get("medad")
    if not extra:
        return
    if extra.get("visual_state_dict"):
        detector.model.visual.load_state_dict(extra["visual_state_dict"])
    if extra.get("normalizer"):
        detector.normalizer.load_state_dict(extra["normalizer"])
    bank = extra.get("memory_bank")
    detector.memory_bank = MemoryBank(bank["seg"], bank["det"]).to(detector.device) if bank else None
    for key in _OPTIONS:
        if key in extra:
            setattr(detector, key, extra[key])
    if extra.get("thresholds"):
        detector.thresholds = tuple(float(t) for t in extra["thresholds"])
    detector.metadata = dict(extra.get("provenance", {}))


def checkpoint_state(detector: AnomalyDetector, extra: Optional[dict[str, Any]] = None,
                     include_backbone: bool = False) -> dict[str, Any]:
    """The checkpoint dict of ``detector`` (released keys + ``'medad'`` extras).

    ``include_backbone`` also stores the vision tower's weights (only sensible for small backbones such as ``tiny``,
    so a demo checkpoint is self-contained).
    """
    adapters = detector.model.adapters
    meta = {
        "format_version": FORMAT_VERSION,
        "medad_version": __version__,
        "backbone": detector.backbone,
        "backbone_sha256": detector.metadata.get("backbone_sha256"),
        "object_name": detector.object_name,
        "prompt_set": PROMPT_SET,
        "text_features": detector.text_features.detach().cpu(),
        "normalizer": {k: v.cpu() for k, v in detector.normalizer.state_dict().items()},
        "memory_bank": detector.memory_bank.state_dict() if detector.memory_bank is not None else None,
        "thresholds": list(detector.thresholds),
        **{key: getattr(detector, key) for key in _OPTIONS},
        "provenance": {**detector.metadata, **(extra or {})},
        "visual_state_dict": ({k: v.detach().cpu() for k, v in detector.model.visual.state_dict().items()}
                              if include_backbone else None),
    }
    return {
        "seg_adapters": {k: v.cpu() for k, v in adapters.seg_adapters.state_dict().items()},
        "det_adapters": {k: v.cpu() for k, v in adapters.det_adapters.state_dict().items()},
        "medad": meta,
    }


def save_checkpoint(detector: AnomalyDetector, path: str | os.PathLike, extra: Optional[dict[str, Any]] = None,
                    official_only: bool = False, include_backbone: bool = False) -> Path:
    """Write ``detector``'s adapters atomically. ``official_only`` drops the medad extras (pure MVFA format)."""
    state = checkpoint_state(detector, extra, include_backbone)
    if official_only:
        state.pop("medad")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is as readable as any file the user writes
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
