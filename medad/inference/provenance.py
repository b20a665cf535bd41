"""Provenance: which model and which settings made a result.

:func:`provenance` is the one dict of provenance fields every front-end records (``medad score``'s ``run.json`` and
series records, the bundle's and the Label app's results) and the UID salt is made of
(:func:`medad.inference.uids.uid_salt`):

``medad``            medad version
``backbone``         backbone name (``"ViT-L-14-336"``, ``"tiny"``)
``backbone_sha256``  SHA-256 of the backbone weights file (verified by the factory), or the tiny backbone's tag
``model_sha256``     :func:`model_fingerprint`: the detector's own fingerprint (adapters, text features,
                     normalizers, memory bank, options with thresholds, precision; the backbone weights when small)
``object_name``      the prompt object name
``thresholds``       the detector's grading thresholds
``precision``        the backbone precision the detector ran in (``fp32``/``bf16``: ``"auto"`` already resolved)
``axis`` ... ``resize_to_model``: the volume runner's settings (:data:`RUNNER_SETTINGS`), when a runner is given
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["RUNNER_SETTINGS", "model_fingerprint", "provenance", "runner_settings"]

#: :class:`~medad.inference.runner.VolumeRunner` settings that change a map or a score (not batch size, progress).
RUNNER_SETTINGS = ("axis", "intensity", "top_k", "view", "skip_empty", "volume_score", "resize_to_model")


def model_fingerprint(detector: Any) -> str:
    """SHA-256 (hex) of everything in ``detector`` that determines its outputs (``AnomalyDetector.fingerprint``)."""
    return str(detector.fingerprint())


def runner_settings(runner: Any) -> dict[str, Any]:
    """The :data:`RUNNER_SETTINGS` of a :class:`~medad.inference.runner.VolumeRunner` as plain values."""
    return {"axis": runner.axis, "intensity": str(runner.intensity_spec), "top_k": int(runner.top_k),
            "view": runner.view, "skip_empty": bool(runner.skip_empty), "volume_score": runner.volume_score_rule,
            "resize_to_model": bool(runner.resize_to_model)}


def provenance(detector: Any, runner: Optional[Any] = None) -> dict[str, Any]:
    """The provenance fields of ``detector`` (and ``runner``'s settings), plain JSON values (see the module doc).

    Hashes the detector's state once (milliseconds for the adapters; the large backbone is identified by its
    weights digest): compute it once per model, not once per volume.
    """
    from .. import __version__

    fields: dict[str, Any] = {
        "medad": __version__,
        "backbone": str(detector.backbone),
        "backbone_sha256": str(detector.metadata.get("backbone_sha256", "") or ""),
        "model_sha256": model_fingerprint(detector),
        "object_name": str(detector.options.object_name),
        "thresholds": [float(t) for t in detector.options.thresholds],
        "precision": str(detector.precision),
    }
    if runner is not None:
        fields.update(runner_settings(runner))
    return fields
