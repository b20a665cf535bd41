"""Build the open_clip backbone from a medad model config (``configs/*.json``), never downloading anything.

A medad config names either a built-in open_clip architecture (``open_clip_model``) or carries a full open_clip model
config inline (``open_clip_config``), plus the working resolution, the adapter levels and the known SHA-256 of
released weights. This mirrors open_clip's config-as-data registry (``open_clip/model_configs``).
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import open_clip
import torch

__all__ = ["list_backbones", "get_backbone_config", "build_clip", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).parent / "configs"


def list_backbones() -> list[str]:
    """Names of the medad backbone configs (``tiny``, ``ViT-L-14-336``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@lru_cache(maxsize=None)
def _read_config(name: str) -> str:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown backbone {name!r}. Known backbones: {', '.join(list_backbones())}.")
    return path.read_text()


def get_backbone_config(name: str) -> dict[str, Any]:
    """The medad config of backbone ``name`` with the resolved open_clip config under ``"clip"``."""
    cfg = json.loads(_read_config(name))
    if "open_clip_config" in cfg:
        clip_cfg = copy.deepcopy(cfg["open_clip_config"])
    else:
        clip_cfg = open_clip.get_model_config(cfg["open_clip_model"])
        if clip_cfg is None:
            raise ValueError(f"open_clip has no architecture {cfg['open_clip_model']!r}")
        clip_cfg = copy.deepcopy(clip_cfg)
    clip_cfg["vision_cfg"]["image_size"] = cfg["image_size"]
    clip_cfg["quick_gelu"] = bool(cfg.get("quick_gelu", False))
    cfg["clip"] = clip_cfg
    cfg["name"] = name
    return cfg


def build_clip(cfg: dict[str, Any]) -> open_clip.CLIP:
    """Instantiate an open_clip ``CLIP`` from a resolved medad config (random weights, eval mode).

    ``init_seed`` in the config makes the random initialization reproducible (the ``tiny`` backbone).
    Position embeddings of real weights are resized to the working grid when they are loaded
    (:func:`medad.weights.load_backbone_weights`).
    """
    clip_cfg = cfg["clip"]
    seed = cfg.get("init_seed")
    kwargs = dict(embed_dim=clip_cfg["embed_dim"], vision_cfg=clip_cfg["vision_cfg"], text_cfg=clip_cfg["text_cfg"],
                  quick_gelu=clip_cfg["quick_gelu"])
    if seed is None:
        model = open_clip.CLIP(**kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = open_clip.CLIP(**kwargs)
    return model.eval()
