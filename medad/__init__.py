"""medad: medical anomaly detection with an MVFA-adapted CLIP, on MONAI."""

from ._version import __version__
from .factory import load_detector
from .model.detector import AnomalyDetector, DetectionResult

__all__ = ["__version__", "load_detector", "AnomalyDetector", "DetectionResult"]
