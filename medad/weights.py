"""Backbone weight files: SHA-256 verification, the local weight cache, loading into open_clip, explicit fetch.

Nothing here downloads unless :func:`fetch_weights` is called explicitly (``medad weights fetch``).
Accepted files: the OpenAI TorchScript archive (``ViT-L-14-336px.pt``), an open_clip/PyTorch state dict
(``.pt``/``.pth``/``.bin``, read with ``torch.load(weights_only=True)``) or a ``.safetensors`` file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from .io._atomic import atomic_path
from .model.backbone import get_backbone_config, list_backbones

__all__ = ["WeightsError", "cache_dir", "sha256_file", "known_hashes", "verify_weights", "import_weights",
           "find_cached_weights", "read_state_dict", "load_backbone_weights", "fetch_weights"]

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """A weights file is missing, unknown, corrupt or of the wrong format."""


def cache_dir() -> Path:
    """``$MEDAD_HOME`` or ``~/.cache/medad``."""
    return Path(os.environ.get("MEDAD_HOME", Path.home() / ".cache" / "medad"))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def known_hashes(backbone: Optional[str] = None) -> dict[str, tuple[str, str]]:
    """``{sha256: (backbone, tag)}`` of released weights listed in the backbone configs."""
    out = {}
    for name in [backbone] if backbone else list_backbones():
        for tag, entry in get_backbone_config(name).get("known_weights", {}).items():
            out[entry["sha256"]] = (name, tag)
    return out


def _registry_path() -> Path:
    return cache_dir() / "weights" / "index.json"


def _registry() -> dict[str, Any]:
    p = _registry_path()
    return json.loads(p.read_text()) if p.is_file() else {}


def verify_weights(path: str | os.PathLike, expected_sha256: Optional[str] = None,
                   backbone: Optional[str] = None) -> str:
    """Check a weights file against ``expected_sha256`` or the known hashes; return its SHA-256.

    Raises:
        WeightsError: the file is missing, or its hash matches neither the expected nor any known hash.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist.")
    digest = sha256_file(path)
    if expected_sha256 is not None:
        if digest != expected_sha256.lower():
            raise WeightsError(f"SHA-256 mismatch for {path}: expected {expected_sha256}, got {digest}. The file is "
                               "corrupt or not the one you meant; download it again or pass the right hash.")
        return digest
    known = known_hashes(backbone)
    if digest not in known:
        listed = ", ".join(f"{b}/{t}={h[:12]}..." for h, (b, t) in known.items()) or "none"
        raise WeightsError(f"{path} has SHA-256 {digest}, which is not a known release ({listed}). If you trust the "
                           "file, pass its hash explicitly (--sha256 / expected_sha256=...).")
    return digest


def import_weights(path: str | os.PathLike, expected_sha256: Optional[str] = None) -> Path:
    """Verify ``path`` and copy it into the cache (``<cache>/weights/<filename>``); return the cached path."""
    digest = verify_weights(path, expected_sha256)
    backbone, tag = known_hashes().get(digest, (None, "user"))
    dest_dir = cache_dir() / "weights"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(path).name
    with atomic_path(dest) as tmp:
        shutil.copyfile(path, tmp)
    _register(dest, digest, backbone, tag)
    return dest


def _register(dest: Path, digest: str, backbone: Optional[str], tag: str) -> None:
    reg = _registry()
    reg[dest.name] = {"sha256": digest, "backbone": backbone, "tag": tag}
    _registry_path().write_text(json.dumps(reg, indent=2))


def find_cached_weights(backbone: str) -> Optional[Path]:
    """The cached file of a known release for ``backbone``, if it was imported."""
    for entry in get_backbone_config(backbone).get("known_weights", {}).values():
        p = cache_dir() / "weights" / entry["filename"]
        if p.is_file():
            return p
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dict(path: str | os.PathLike, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors file, a torch file (weights_only) or, when ``trusted`` (its hash was
    verified), an OpenAI TorchScript archive."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        if not trusted:
            raise WeightsError(f"{path} is a TorchScript archive; medad only opens those after SHA-256 verification.")
        sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - report any unpickling failure with the file name
            raise WeightsError(f"Cannot read {path} as a weights-only torch file ({type(e).__name__}: {e}).") from e
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(sd).__name__}).")
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):
        sd.pop(key, None)
    return sd


def _to_fp32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reduced-precision floating tensors (fp16/bf16 exports, the OpenAI archive's partial fp16) -> fp32.

    Done before the position-embedding resize, whose antialiased bicubic kernel has no fp16 CPU implementation; the
    model is fp32 anyway (``precision="bf16"`` casts the backbone after loading), so an fp16 file and its fp32 twin
    (the same values upcast) give identical weights and maps.
    """
    return {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != torch.float32 else v
            for k, v in sd.items()}


def load_backbone_weights(clip: torch.nn.Module, path: str | os.PathLike, backbone: str,
                          expected_sha256: Optional[str] = None) -> str:
    """Verify and load backbone weights into an open_clip ``CLIP``; returns the file's SHA-256.

    Tensors may be fp32, fp16 or bf16 (cast to fp32 first). Position embeddings are resized (bicubic, antialiased) to
    the working grid, e.g. 24x24 -> 17x17 at 240 px.
    """
    from open_clip.model import resize_pos_embed

    digest = verify_weights(path, expected_sha256, backbone=None)
    sd = _to_fp32(read_state_dict(path, trusted=True))
    resize_pos_embed(sd, clip)
    missing, unexpected = clip.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path} does not fit backbone {backbone!r}: {len(missing)} missing keys "
                           f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}).")
    return digest


def fetch_weights(backbone: str = "ViT-L-14-336", tag: str = "openai") -> Path:
    """Download a known release into the cache and verify it. Explicit opt-in for machines that are online."""
    import urllib.request

    entry = get_backbone_config(backbone)["known_weights"][tag]
    dest_dir = cache_dir() / "weights"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / entry["filename"]
    log.info("downloading %s", entry["url"])
    with atomic_path(dest) as tmp:  # a failed download or a wrong hash leaves no file behind
        with urllib.request.urlopen(entry["url"]) as r, open(tmp, "wb") as f:  # noqa: S310 - explicit user request
            shutil.copyfileobj(r, f)
        digest = verify_weights(tmp, entry["sha256"])
    _register(dest, digest, backbone, tag)
    return dest
