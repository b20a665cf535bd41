"""Pure-torch MVFA model: backbone builder, adapters, prompts, scoring, memory bank, normalizers, detector."""

from .adapters import MultiLevelAdapters, ResidualAdapter
from .backbone import build_clip, get_backbone_config, list_backbones
from .detector import AnomalyDetector, DetectionResult
from .memory_bank import MemoryBank
from .mvfa import MVFAModel
from .normalization import ScoreNormalizer, fuse

__all__ = ["AnomalyDetector", "DetectionResult", "MVFAModel", "MultiLevelAdapters", "ResidualAdapter", "MemoryBank",
           "ScoreNormalizer", "fuse", "build_clip", "get_backbone_config", "list_backbones"]
