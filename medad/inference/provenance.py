"""Provenance: which model and which settings made a result.

:func:`provenance` is the one dict of provenance fields every front-end records (``medad score``'s ``run.json`` and
series records, the bundle's and the Label app's results) and the UID salt is made of
(:func:`medad.inference.uids.uid_salt`):

``medad``            medad version
``backbone``         backbone name (``"ViT-L-14-336"``, ``"tiny"``)
``backbone_sha256``  SHA-256 of the backbone weights file (verified by the factory), or the tiny backbone's tag
``model_sha256``     :func:`model_fingerprint`: the detector's own fingerprint (adapters, text features,
                     normalizers, memory bank, options with thresholds, precision; the backbone weights when small)
``adapters_sha256``  :func:`adapters_digest`: SHA-256 of what was learned on top of the backbone (adapters, text
                     features, normalizers, memory bank)
``protocol``         the training protocol recorded in the checkpoint (``metadata["protocol"]``), else ``""``
``normalize_input``  whether CLIP mean/std normalization is applied to the input
``object_name``      the prompt object name
``thresholds``       the detector's grading thresholds
``precision``        the backbone precision the detector ran in (``fp32``/``bf16``: ``"auto"`` already resolved)
``axis`` ... ``resize_to_model``: the volume runner's settings (:data:`RUNNER_SETTINGS`), when a runner is given
``operating_point``  with a runner: :meth:`medad.model.options.Calibration.summary` of the calibration the runner
                     applies (specificity, raw threshold, calibrated operating point, n, false-positive bounds), or
                     None (uncalibrated: raw scores, nothing flagged); ``calibration`` says why when not applied
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["RUNNER_SETTINGS", "adapters_digest", "model_fingerprint", "provenance", "runner_settings"]

#: :class:`~medad.inference.runner.VolumeRunner` settings that change a map or a score (not batch size, progress).
RUNNER_SETTINGS = ("axis", "intensity", "top_k", "view", "skip_empty", "volume_score", "resize_to_model")


def model_fingerprint(detector: Any) -> str:
    """SHA-256 (hex) of everything in ``detector`` that determines its outputs (``AnomalyDetector.fingerprint``)."""
    return str(detector.fingerprint())


def adapters_digest(detector: Any) -> str:
    """SHA-256 (hex) of the detector's state without the backbone (``model.visual.*``): adapters, text features,
    normalizers, memory bank. Options (thresholds, calibration) are not part of it."""
    import hashlib

    import torch

    h = hashlib.sha256()
    state = detector.state_dict()
    for k in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor) and not k.startswith("model.visual.")):
        v = state[k].detach().cpu().contiguous()
        h.update(f"|{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        "adapters_sha256": adapters_digest(detector),
        "protocol": str(getattr(detector, "metadata", {}).get("protocol", "") or ""),
        "normalize_input": bool(detector.options.normalize_input),
        "object_name": str(detector.options.object_name),
        "thresholds": [float(t) for t in detector.options.thresholds],
        "precision": str(detector.precision),
    }
    if runner is not None:
        fields.update(runner_settings(runner))
        cal, note = runner.calibration_status()
        fields["operating_point"] = cal.summary() if cal is not None else None
        fields["calibration"] = note
    return fields
