"""THE medad checkpoint format (adapter checkpoints, the bundle's ``models/model.pt``): file I/O only.

Released MVFA format: ``{'seg_adapters': state_dict, 'det_adapters': state_dict}`` with keys
``{0..3}.fc1.0.weight [768, 1024]`` and ``{0..3}.fc2.0.weight [1024, 768]``.

medad writes the same two keys (so MVFA's own scripts can read medad checkpoints) plus a ``'medad'`` entry holding
plain data only (loadable with ``torch.load(weights_only=True)``)::

    format_version 1, medad_version, backbone, backbone_sha256,
    object_name, prompt_set, image_score_rule, include_cls_in_bank, normalize_input, smoothing_sigma, thresholds
        (the DetectorOptions fields, flat),
    text_features [D, 2], normalizer {low, high}, memory_bank {seg, det} | None,
    provenance {...} (the detector's metadata + extras), visual_state_dict (backbone weights, small backbones) | None

It is a re-arrangement of :meth:`AnomalyDetector.state_dict` (``model.adapters.seg_adapters.*`` -> ``seg_adapters``,
``normalizer.*`` -> ``normalizer``, ...): :func:`checkpoint_state` and :func:`apply_checkpoint` translate between
the two, so whatever the detector's state holds is what a checkpoint holds.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ._version import __version__
from .io._atomic import atomic_path
from .model.detector import AnomalyDetector
from .model.options import DetectorOptions

__all__ = ["CheckpointError", "FORMAT_VERSION", "is_checkpoint", "read_checkpoint", "apply_checkpoint",
           "save_checkpoint", "checkpoint_state"]

FORMAT_VERSION = 1
#: Options tied to the text features: taken from a checkpoint only together with its text features.
_TEXT_OPTIONS = ("object_name", "prompt_set")
_ADAPTERS = {"seg_adapters": "model.adapters.seg_adapters.", "det_adapters": "model.adapters.det_adapters."}


class CheckpointError(RuntimeError):
    """An adapter checkpoint cannot be used (wrong format or shapes)."""


def is_checkpoint(state: Any) -> bool:
    """True for an MVFA/medad checkpoint dict (``seg_adapters`` + ``det_adapters`` keys), not a module state dict."""
    return isinstance(state, Mapping) and "seg_adapters" in state and "det_adapters" in state


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load an adapter checkpoint with ``weights_only=True`` and check its format (not its shapes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Adapter checkpoint {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"Cannot read adapter checkpoint {path}: {type(e).__name__}: {e}") from e
    if not is_checkpoint(ckpt):
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not an MVFA adapter checkpoint: expected keys 'seg_adapters' and "
                              f"'det_adapters', found {keys}.")
    return ckpt


def _prefixed(prefix: str, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in values.items()}


def _sub(state: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.detach().cpu() for k, v in state.items() if k.startswith(prefix)}


def apply_checkpoint(detector: AnomalyDetector, ckpt: Mapping[str, Any], source: str = "<checkpoint>",
                     with_text: bool = False) -> None:
    """Load a checkpoint dict into ``detector`` (through its ``load_state_dict``); shape errors name ``source``.

    Args:
        ckpt: the released MVFA format (adapters only: everything else of ``detector`` is kept) or medad's (also
            normalizers, memory bank (None = no bank), options, metadata and, when stored, the backbone weights).
        with_text: also take the checkpoint's text features with its ``object_name`` and ``prompt_set``. False (the
            factory) keeps the detector's own, computed for the object name that was asked for.
    """
    state: dict[str, Any] = {}
    for branch, prefix in _ADAPTERS.items():
        target = getattr(detector.model.adapters, branch)
        expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in ckpt[branch].items()}
        if expected != got:
            diff = [f"{k}: expected {expected.get(k)}, found {got.get(k)}"
                    for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)][:3]
            raise CheckpointError(f"{source}: {branch} do not fit backbone {detector.backbone!r} "
                                  f"({'; '.join(diff)}). Was it trained for another backbone?")
        state.update(_prefixed(prefix, ckpt[branch]))
    extra = ckpt.get("medad") or {}
    if extra.get("backbone") not in (None, detector.backbone):
        raise CheckpointError(f"{source}: saved for backbone {extra['backbone']!r}, the detector is built on "
                              f"{detector.backbone!r} (pass the matching backbone)")
    current = detector.state_dict()
    keep = ("text_features", "normalizer.") if extra else ("text_features", "normalizer.", "memory_bank.")
    state.update({k: v for k, v in current.items() if k.startswith(keep)})
    extra_state = dict(current["_extra_state"])
    if extra:
        if extra.get("visual_state_dict"):
            state.update(_prefixed("model.visual.", extra["visual_state_dict"]))
        if extra.get("normalizer"):
            state.update(_prefixed("normalizer.", extra["normalizer"]))
        if extra.get("memory_bank"):
            state.update(_prefixed("memory_bank.", extra["memory_bank"]))
        take_text = with_text and extra.get("text_features") is not None
        if take_text:
            state["text_features"] = extra["text_features"]
        names = {f.name for f in fields(DetectorOptions)} - (set() if take_text else set(_TEXT_OPTIONS))
        options = {**extra_state["options"],
                   **{k: v for k, v in extra.items() if k in names and v is not None and v != []}}
        extra_state.update(options=options, metadata=dict(extra.get("provenance") or {}))
    state["_extra_state"] = extra_state
    missing, unexpected = detector.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("model.visual.")]  # a backbone not stored stays as it is
    if missing or unexpected:
        raise CheckpointError(f"{source}: does not fit the detector (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]})")


def checkpoint_state(detector: AnomalyDetector, extra: Optional[dict[str, Any]] = None,
                     include_backbone: bool = False) -> dict[str, Any]:
    """The checkpoint dict of ``detector`` (released keys + ``'medad'`` extras) from its ``state_dict()``.

    ``include_backbone`` also stores the vision tower's weights (only sensible for small backbones such as ``tiny``,
    so a demo checkpoint is self-contained).
    """
    state = detector.state_dict()
    ext = state["_extra_state"]
    bank = _sub(state, "memory_bank.")
    meta = {
        "format_version": FORMAT_VERSION,
        "medad_version": __version__,
        "backbone": ext["backbone"],
        "backbone_sha256": ext["metadata"].get("backbone_sha256"),
        **ext["options"],
        "text_features": state["text_features"].detach().cpu(),
        "normalizer": _sub(state, "normalizer."),
        "memory_bank": bank or None,
        "provenance": {**ext["metadata"], **(extra or {})},
        "visual_state_dict": _sub(state, "model.visual.") if include_backbone else None,
    }
    return {**{branch: _sub(state, prefix) for branch, prefix in _ADAPTERS.items()}, "medad": meta}


def save_checkpoint(detector: AnomalyDetector, path: str | os.PathLike, extra: Optional[dict[str, Any]] = None,
                    official_only: bool = False, include_backbone: bool = False) -> Path:
    """Write ``detector``'s checkpoint atomically. ``official_only`` drops the medad extras (pure MVFA format)."""
    state = checkpoint_state(detector, extra, include_backbone)
    if official_only:
        state.pop("medad")
    path = Path(path)
    with atomic_path(path) as tmp:  # created with the usual umask permissions, like any file the user writes
        torch.save(state, tmp)
    return path
