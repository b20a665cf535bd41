"""Inference on volumes: the volume runner and the one writer of its outputs.

* :class:`VolumeRunner` (:mod:`~medad.inference.runner`): a volume in, a 3D anomaly map in the source geometry and
  scores out (:class:`VolumeResult`).
* :func:`write_outputs` (:mod:`~medad.inference.outputs`): the NIfTI map, PNG overlays, DICOM Parametric Map + SEG of
  a result, with the grading (:mod:`~medad.inference.grading`), UIDs (:mod:`~medad.inference.uids`) and provenance
  (:mod:`~medad.inference.provenance`) decided in one place each; :mod:`~medad.inference.table` is the results table.

``medad score`` (:mod:`medad.batch`), the MONAI bundle and the MONAI Label app all go through these.
"""

from .grading import GRADE_COLORS, GRADE_LABELS, GradeColor, grade, grade_colors, grading_summary
from .outputs import OutputOptions, OutputRecord, result_scores, write_outputs
from .provenance import model_fingerprint, provenance
from .runner import VolumeResult, VolumeRunner
from .table import RESULTS_COLUMNS, results_row, series_fields, write_results_csv
from .uids import OutputUIDs, output_uids

__all__ = ["GRADE_COLORS", "GRADE_LABELS", "GradeColor", "OutputOptions", "OutputRecord", "OutputUIDs",
           "RESULTS_COLUMNS", "VolumeResult",
           "VolumeRunner", "grade", "grade_colors", "grading_summary", "model_fingerprint", "output_uids", "provenance",
           "result_scores", "results_row", "series_fields", "write_outputs", "write_results_csv"]
