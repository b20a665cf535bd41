"""Pure-torch MVFA model: backbone builder, adapters, prompts, scoring, memory bank, normalizers, options, detector.

Imports nothing from other ``medad`` packages (file I/O lives in ``medad.checkpoints`` / ``medad.weights``).
"""

from .backbone import build_clip, get_backbone_config, list_backbones
from .detector import AnomalyDetector, DetectionResult
from .mvfa import MultiLevelAdapters, MVFAModel, ResidualAdapter
from .normalization import ScoreNormalizer, fuse
from .options import DEFAULT_THRESHOLDS, DetectorOptions
from .precision import resolve_precision
from .scoring import MemoryBank

__all__ = ["AnomalyDetector", "DetectionResult", "DetectorOptions", "DEFAULT_THRESHOLDS", "MVFAModel",
           "MultiLevelAdapters", "ResidualAdapter", "MemoryBank", "ScoreNormalizer", "fuse", "build_clip",
           "get_backbone_config", "list_backbones", "resolve_precision"]
