"""Evaluation of a detector on a dataset split (:func:`evaluate`) and the metrics it uses (:mod:`.metrics`)."""

from .evaluate import evaluate, evaluate_samples, fit_normalizers

__all__ = ["evaluate", "evaluate_samples", "fit_normalizers"]
