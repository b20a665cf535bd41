"""One loaded detector per app, shared by the infer and train tasks, reloaded when the reviewer loop saves.

The detector comes from :func:`medad.load_detector` with the app's ``--conf`` options. If the reviewer loop has saved
a site checkpoint (adapters + grown memory bank, see :mod:`medad.label.train_task`), that checkpoint is loaded in
place of ``adapters``; :meth:`DetectorStore.get` notices a newer checkpoint (by modification time) and reloads, so
the infer task picks up a new bank without a server restart.

``/info`` must answer while an inference runs or a checkpoint loads: :meth:`DetectorStore.info` and
:meth:`DetectorStore.thresholds` read a snapshot taken at each (re)load and never wait for the loading lock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from medad.io import find_volumes, load_series, load_volume, volume_source

from .config import LabelConfig

__all__ = ["DetectorStore", "load_source", "merge_banks"]

logger = logging.getLogger(__name__)


def load_source(source):
    """A support/normal study as a volume: a :func:`medad.io.find_volumes` item or an image path (a DICOMweb-cache
    NIfTI is read from its DICOM series folder, see :func:`medad.io.volume_source`)."""
    if isinstance(source, dict):
        return load_series(source["series"])
    return load_volume(volume_source(str(source)))


def merge_banks(banks: Sequence[Any]):
    """Concatenate memory banks (``MemoryBank`` objects, ``None`` skipped) along the token axis; None if all empty."""
    from medad.model import MemoryBank

    banks = [b for b in banks if b is not None]
    if not banks:
        return None
    if len(banks) == 1:
        return banks[0]
    device = banks[0].seg.device
    return MemoryBank(torch.cat([b.seg.to(device) for b in banks], 1), torch.cat([b.det.to(device) for b in banks], 1))


class DetectorStore:
    """Loads and caches the app's detector and volume runner.

    Args:
        config: the app options.
    """

    def __init__(self, config: LabelConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._detector = None
        self._runner = None
        self._loaded_mtime: Optional[float] = None
        self._site_in_use = False
        self._provenance: Optional[tuple[Any, dict[str, Any]]] = None
        self._snapshot: dict[str, Any] = {"status": "loading"}
        self._reloading: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ building
    def _site_mtime(self) -> Optional[float]:
        try:
            return os.stat(self.config.site_checkpoint).st_mtime
        except OSError:
            return None

    def base_id(self) -> str:
        """Digest of what the reviewer loop builds on (backbone, weights, adapters file, object name, support studies,
        shots); stored in the site checkpoint so a checkpoint grown from other options is not used by mistake."""
        import hashlib

        from medad.weights import sha256_file

        cfg = self.config
        adapters = cfg.adapters if cfg.adapters in (None, "demo") else sha256_file(cfg.adapters)
        support = None
        if cfg.support:
            images = sorted({Path(v["image"]) for v in find_volumes(cfg.support)}, key=lambda p: (p.is_dir(), p))
            support = [(p.name, p.stat().st_size if p.is_file() else len(list(p.iterdir()))) for p in images]
        parts = {"backbone": cfg.backbone, "weights": os.path.basename(cfg.weights or ""), "adapters": adapters,
                 "object_name": cfg.object_name, "support": support, "shots": cfg.shots}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _site_usable(self) -> bool:
        """The site checkpoint exists and was grown from the current options (else it is ignored, with a warning)."""
        if self._site_mtime() is None:
            return False
        from medad.checkpoints import CheckpointError, read_checkpoint

        try:
            provenance = (read_checkpoint(self.config.site_checkpoint).get("medad") or {}).get("provenance") or {}
        except CheckpointError as e:
            logger.warning("ignoring the site checkpoint: %s", e)
            return False
        if provenance.get("site_base") != self.base_id():
            logger.warning("ignoring the site checkpoint %s: it was grown from other adapters/backbone/support "
                           "options than the current ones; run the train task again to rebuild it",
                           self.config.site_checkpoint)
            return False
        return True

    def build(self, use_site: bool = True):
        """A fresh detector: the site checkpoint if present, grown from the current options and ``use_site``; else
        ``adapters`` + ``support``."""
        import medad

        cfg = self.config
        site = use_site and self._site_usable()
        if use_site:
            self._site_in_use = site
        det = medad.load_detector(backbone=cfg.backbone, weights=cfg.weights,
                                  adapters=cfg.site_checkpoint if site else cfg.adapters,
                                  object_name=cfg.object_name, device=cfg.device, precision=cfg.precision)
        if cfg.thresholds is not None:
            det.options.thresholds = tuple(cfg.thresholds)
        if not site and cfg.support:
            det.memory_bank = merge_banks([det.memory_bank, self.bank_from(det, find_volumes(cfg.support))])
        return det

    def make_runner(self, detector, job=None):
        """A :class:`medad.inference.VolumeRunner` with the ``runner.*`` options (``top_k`` from the app); with an
        :class:`~medad.label.server.queue.InferJob` ``job``, the job's ``slices_done`` follows the scoring."""
        from medad.inference import VolumeRunner

        if job is not None:
            detector = _ProgressDetector(detector, job)
        return VolumeRunner(detector, **{"top_k": self.config.top_k, **self.config.runner_options})

    def model_inputs(self, volume, detector) -> torch.Tensor:
        """All non-empty slices of ``volume`` as model inputs ``[S, 3, size, size]``, prepared exactly as the runner
        does (:meth:`VolumeRunner.model_inputs`: its intensity scaling, view, padding, resizing, empty-slice rule)."""
        x, _ = self.make_runner(detector).model_inputs(volume)  # prepares inputs, runs no model
        if not len(x):
            raise ValueError("the normal study has no non-empty slice (all background after intensity scaling)")
        return x

    def bank_index(self, n: int) -> np.ndarray:
        """Which of ``n`` slices go to the memory bank: ``config.shots`` evenly spaced over the central 80 % (the
        outermost slices of a study are often partial)."""
        lo, hi = 0.1 * (n - 1), 0.9 * (n - 1)
        return np.unique(np.round(np.linspace(lo, hi, min(self.config.shots, n))).astype(int))

    def support_slices(self, volume, detector) -> torch.Tensor:
        """The ``config.shots`` model inputs ``[N, 3, S, S]`` of a normal volume that go to the memory bank
        (:meth:`bank_index` of :meth:`model_inputs`)."""
        x = self.model_inputs(volume, detector)
        return x[torch.as_tensor(self.bank_index(len(x)))]

    def bank_from(self, detector, sources: Sequence[str | os.PathLike | dict]):
        """Memory bank of ``config.shots`` slices of each normal volume in ``sources`` (None if no sources).

        ``sources``: image paths or :func:`medad.io.find_volumes` items. ``detector.memory_bank`` is left unchanged.
        """
        images = [self.support_slices(load_source(src), detector) for src in sources]
        if not images:
            return None
        previous = detector.memory_bank
        try:
            return detector.fit_memory_bank(torch.cat(images))
        finally:
            detector.memory_bank = previous

    # ------------------------------------------------------------------ access
    def get(self):
        """``(detector, runner)``, (re)loaded if the site checkpoint changed since the last load."""
        with self._lock:
            mtime = self._site_mtime()
            if self._detector is None or mtime != self._loaded_mtime:
                if self._detector is not None:
                    logger.info("site checkpoint changed: reloading the detector")
                self._detector = self.build()
                self._runner = self.make_runner(self._detector)
                self._loaded_mtime = mtime
                self._snapshot = self._take_snapshot(self._detector)
            return self._detector, self._runner

    def _take_snapshot(self, det) -> dict[str, Any]:
        bank = det.memory_bank
        return {"backbone": det.backbone, "object_name": det.options.object_name,
                "thresholds": list(det.options.thresholds),
                "memory_bank_tokens": len(bank) if bank is not None else 0,
                "bank_normalizer_fitted": bool(det.normalizer.is_fitted("pixel_bank")),
                "calibrated": getattr(det.options, "calibration", None) is not None,
                "site_checkpoint": bool(self._site_in_use)}

    def refresh_async(self) -> None:
        """Reload in a background thread if the site checkpoint changed (``/info`` calls this: it never waits)."""
        if self._detector is None or self._site_mtime() == self._loaded_mtime:
            return
        if self._reloading is None or not self._reloading.is_alive():  # a second thread's get() finds it loaded
            self._reloading = threading.Thread(target=self.get, name="medad-reload", daemon=True)
            self._reloading.start()

    def thresholds(self) -> tuple[float, ...]:
        """The loaded detector's grading thresholds (no waiting for a load in progress)."""
        from medad.model.options import DEFAULT_THRESHOLDS

        return tuple(self._snapshot.get("thresholds") or self.config.thresholds or DEFAULT_THRESHOLDS)

    def provenance(self) -> dict[str, Any]:
        """:func:`medad.inference.provenance` of the loaded detector and runner (the model fingerprint covers the
        adapters, the grown memory bank and the thresholds): recorded with every result and mixed into the DICOM
        UIDs, so a grown bank gives new PM/SEG series. Computed once per (re)load."""
        from medad.inference import provenance

        with self._lock:
            det, runner = self.get()
            if self._provenance is None or self._provenance[0] is not det:
                self._provenance = (det, provenance(det, runner))
            return dict(self._provenance[1])

    def info(self) -> dict[str, Any]:
        """Plain-data summary for ``/info`` (no paths beyond the app's own, no identifiers), from the snapshot of the
        last load, plus the reviewer loop's last report: never waits for an inference or a load."""
        import json as _json

        self.refresh_async()
        out = dict(self._snapshot)
        if self._reloading is not None and self._reloading.is_alive():
            out["reloading"] = True
        try:
            with open(self.config.report_path) as f:
                out["reviewer_loop"] = _json.load(f)
        except (OSError, ValueError):
            pass
        return out


class _ProgressDetector:
    """The detector, counting the slices it scores into an inference job's progress."""

    def __init__(self, detector, job) -> None:
        self._detector = detector
        self._job = job
        self._done = 0

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def predict(self, images, *args, **kwargs):
        res = self._detector.predict(images, *args, **kwargs)
        self._done += len(images)
        self._job.progress(self._done)
        return res
