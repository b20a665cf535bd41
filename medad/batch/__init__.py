"""Batch scoring of PACS exports (``medad score``) as a straight pipeline, one module per step:

:mod:`~medad.batch.plan` (index, select, resume plan) -> :mod:`~medad.batch.load` (decoding workers) ->
:mod:`~medad.batch.execute` (score with :class:`medad.inference.VolumeRunner`, write with
:func:`medad.inference.write_outputs`, STOW) -> :mod:`~medad.batch.merge` (``results.csv``, ``manifest.jsonl``,
``summary.json``) -> :mod:`~medad.batch.report` (``report.html``); :mod:`~medad.batch.records` holds the on-disk
state (series records, ``run.json``, the run lock) and :func:`score` (:mod:`~medad.batch.api`) runs the steps.
"""

from .api import ScoreConfigError, ScoreSummary, score
from .records import OutputWriteError

__all__ = ["OutputWriteError", "ScoreConfigError", "ScoreSummary", "score"]
