"""``load_detector``: the one way to build a ready :class:`~medad.model.detector.AnomalyDetector`."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoints import apply_checkpoint, read_checkpoint
from .io._atomic import atomic_path
from .model.backbone import build_clip, get_backbone_config
from .model.detector import AnomalyDetector
from .model.mvfa import MVFAModel
from .model.options import DetectorOptions
from .model.precision import resolve_precision
from .model.prompts import PROMPT_SET, encode_prompt_ensemble
from .weights import WeightsError, cache_dir, find_cached_weights, load_backbone_weights, sha256_file

__all__ = ["load_detector", "text_features", "DEMO_ADAPTERS", "DEFAULT_OBJECT_NAME"]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
#: The embedded demo model: tiny backbone + adapters trained on synthetic phantoms. NOT for clinical use.
DEMO_ADAPTERS = ASSETS / "demo-tiny-phantom.pt"
DEFAULT_OBJECT_NAME = DetectorOptions.object_name


def _resolve_adapters(adapters: Optional[str | os.PathLike]) -> Optional[Path]:
    if adapters is None:
        return None
    if str(adapters) == "demo":
        path, sums = DEMO_ADAPTERS, ASSETS / "SHA256SUMS"
        if not path.is_file():
            raise FileNotFoundError(f"The demo adapters {path} are missing from this install.")
        expected = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
        if expected.get(path.name) != sha256_file(path):
            raise WeightsError(f"{path} does not match its SHA-256 in {sums}; reinstall medad.")
        return path
    return Path(adapters)


def _text_features(clip, backbone_id: str, object_name: str, device: str) -> torch.Tensor:
    """Prompt-ensemble features, cached on disk per (backbone weights, object name, prompt set)."""
    import open_clip

    key = hashlib.sha256(f"{backbone_id}|{object_name}|{PROMPT_SET}".encode()).hexdigest()[:24]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", object_name)[:32]
    path = cache_dir() / "text_features" / f"{slug}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed
            log.warning("ignoring unreadable text-feature cache %s", path)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
    clip = clip.to(device)
    feats = encode_prompt_ensemble(clip.encode_text, tokenizer, object_name, device).cpu()
    try:
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
    except OSError as e:  # a read-only home must not stop inference
        log.warning("could not cache text features at %s: %s", path, e)
    return feats


def _build_backbone(backbone: str, weights, expected_sha256: Optional[str]):
    """``(config, open_clip CLIP with verified weights, backbone id, init seed)``; never downloads."""
    cfg = get_backbone_config(backbone)
    seed = int(cfg.get("init_seed", 0))
    if weights is None and cfg.get("known_weights"):
        weights = find_cached_weights(backbone)
        if weights is None:
            raise WeightsError(
                f"Backbone {backbone!r} needs its CLIP weights file. Import it once with "
                f"`medad weights import /path/to/{next(iter(cfg['known_weights'].values()))['filename']}` "
                "or pass weights=PATH (use backbone='tiny' for a quick try without weights).")
    clip = build_clip({**cfg, "init_seed": seed})
    if weights is not None and str(weights) != "random":
        backbone_id = load_backbone_weights(clip, weights, backbone, expected_sha256)
    else:
        backbone_id = f"{backbone}-random-init-{seed}"
    return cfg, clip, backbone_id, seed


def text_features(backbone: str, object_names: Sequence[str], weights: Optional[str | os.PathLike] = None,
                  device: str | torch.device = "cpu", expected_sha256: Optional[str] = None) -> torch.Tensor:
    """Prompt-ensemble features ``[T, D, 2]`` for several object names with one backbone load (disk-cached)."""
    _, clip, backbone_id, _ = _build_backbone(backbone, weights, expected_sha256)
    return torch.stack([_text_features(clip, backbone_id, name, str(device)) for name in object_names])


def load_detector(
    backbone: Optional[str] = None,
    weights: Optional[str | os.PathLike] = None,
    adapters: Optional[str | os.PathLike] = None,
    object_name: Optional[str] = None,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    expected_sha256: Optional[str] = None,
) -> AnomalyDetector:
    """Build an MVFA detector. Nothing is downloaded.

    Args:
        backbone: ``"ViT-L-14-336"`` (the paper's), ``"tiny"`` (tests/demos) or None: the adapters checkpoint's
            backbone, else ViT-L-14-336.
        weights: backbone weights file (OpenAI ``.pt``, open_clip state dict or safetensors), verified by SHA-256;
            None = the imported cache file (``medad weights import``) for real backbones, the seeded random
            init for ``tiny``; ``"random"`` = seeded random init (benchmarks only).
        adapters: adapter checkpoint (released MVFA format or medad's), ``"demo"`` for the embedded demo model, or
            None for fresh (untrained) adapters.
        object_name: prompt object name; None = the checkpoint's, else ``"Brain"``.
        device: torch device.
        precision: ``"auto"`` (default: bf16 where ``device`` computes it natively, i.e. CUDA with bf16 support or a
            CPU with AMX-BF16/AVX512-BF16, else fp32; logged, see :func:`medad.model.precision.resolve_precision`),
            ``"fp32"`` or ``"bf16"`` (bf16 backbone weights; adapters and scores stay fp32). The detector's
            ``precision`` attribute is the resolved choice.
        expected_sha256: accept a weights file with this hash even if it is not a known release.
    """
    precision = resolve_precision(precision, device)
    ckpt_path = _resolve_adapters(adapters)
    ckpt = read_checkpoint(ckpt_path) if ckpt_path else None
    extra = (ckpt or {}).get("medad") or {}
    backbone = backbone or extra.get("backbone") or "ViT-L-14-336"
    object_name = object_name or extra.get("object_name") or DEFAULT_OBJECT_NAME
    cfg, clip, backbone_id, seed = _build_backbone(backbone, weights, expected_sha256)
    if extra.get("visual_state_dict"):
        backbone_id = extra.get("backbone_sha256") or backbone_id

    cached_text = extra.get("text_features")
    if (cached_text is not None and extra.get("object_name") == object_name and extra.get("prompt_set") == PROMPT_SET
            and extra.get("backbone_sha256") == backbone_id):
        text = cached_text
    else:
        text = _text_features(clip, backbone_id, object_name, str(device))
    with torch.random.fork_rng(devices=[]):  # fresh adapters are reproducible too
        torch.manual_seed(seed + 1)
        model = MVFAModel(clip.visual, cfg["adapter_levels"], cfg["clip"]["embed_dim"])
    det = AnomalyDetector(model, text, backbone=backbone, image_size=cfg["image_size"],
                          options=DetectorOptions(object_name=object_name, prompt_set=PROMPT_SET), precision=precision)
    if ckpt is not None:
        apply_checkpoint(det, ckpt, source=str(ckpt_path))
    det.metadata["backbone_sha256"] = backbone_id
    del clip  # the text tower is no longer needed: its features are cached
    return det.to(device).eval()
