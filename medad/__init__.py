"""medad: medical anomaly detection with an MVFA-adapted CLIP, on MONAI.

The public names are imported on first use, so ``import medad`` (and ``medad --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

_EXPORTS = {"load_detector": ".factory", "AnomalyDetector": ".model.detector", "DetectionResult": ".model.detector"}

__all__ = ["__version__", "load_detector", "AnomalyDetector", "DetectionResult"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medad' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .factory import load_detector
    from .model.detector import AnomalyDetector, DetectionResult
