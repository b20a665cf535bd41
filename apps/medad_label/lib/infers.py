"""The ``anomaly`` infer task of this app. Override methods here to customise a site's deployment."""

from medad.label.infer_task import AnomalyInferTask


class AnomalyInfer(AnomalyInferTask):
    """Graded anomaly label map + scores + continuous map (see :class:`medad.label.infer_task.AnomalyInferTask`)."""
