"""medad: medical anomaly detection with an MVFA-adapted CLIP, on MONAI."""

__version__ = "0.1.0"

from .factory import load_detector  # noqa: E402
from .model.detector import AnomalyDetector, DetectionResult  # noqa: E402

__all__ = ["__version__", "load_detector", "AnomalyDetector", "DetectionResult"]
