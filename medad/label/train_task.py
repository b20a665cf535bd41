"""The reviewer loop: studies a reviewer marked normal grow the few-shot memory bank (MONAI Label ``TrainTask``).

A reviewer who finds no anomaly in a study saves a label with the tag ``normal`` (any label file; its content is
ignored), e.g. ``PUT /datastore/label?image=<id>&tag=normal``; with ``--conf empty_final_is_normal true`` an all-zero
``final`` label counts too. ``POST /train/anomaly`` then

1. builds a fresh detector from the configured ``adapters`` (+ ``support`` bank), so re-running is idempotent;
2. takes ``shots`` slices of every normal study (the runner's own slice preparation) and fits a memory bank on them;
3. concatenates that bank to the configured one and saves adapters + bank (+ thresholds, normalizers) to the site
   checkpoint (``--conf site_checkpoint``, default ``<app>/model/site_adapters.pt``) with
   :func:`medad.checkpoints.save_checkpoint`.

The infer task notices the new checkpoint (see :class:`~medad.label.store.DetectorStore`) and scores the next study
with the grown bank. Study identifiers are not written to the checkpoint, only their count and a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any

import numpy as np
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from .config import LabelConfig
from .store import DetectorStore, merge_banks

__all__ = ["NormalBankTrainTask", "normal_images"]

logger = logging.getLogger(__name__)


def _is_empty_label(path: str) -> bool:
    import SimpleITK as sitk

    try:
        return not np.any(sitk.GetArrayFromImage(sitk.ReadImage(path)))
    except Exception:  # noqa: BLE001 - an unreadable label is not a normal study
        return False


def normal_images(datastore: Datastore, config: LabelConfig) -> list[str]:
    """Sorted ids of the images a reviewer marked normal (tag ``config.normal_tag``, or empty ``final`` labels)."""
    from monailabel.datastore.local import LocalDatastore

    # MONAI Label's get_labeled_images() only knows the 'final' tag (and a DICOMweb datastore answers with the SEG
    # series in the PACS), so look the tag up per image in the local store (the DICOMweb datastore's cache).
    if isinstance(datastore, LocalDatastore):
        ids, label_uri = LocalDatastore.list_images(datastore), LocalDatastore.get_label_uri.__get__(datastore)
    else:
        ids, label_uri = datastore.list_images(), datastore.get_label_uri
    normal = []
    for image_id in ids:
        uri = label_uri(image_id, config.normal_tag)
        if uri and os.path.isfile(uri):
            normal.append(image_id)
        elif config.empty_final_is_normal:
            uri = label_uri(image_id, DefaultLabelTag.FINAL.value)
            if uri and os.path.isfile(uri) and _is_empty_label(uri):
                normal.append(image_id)
    return sorted(normal)


class NormalBankTrainTask(TrainTask):
    """Adds reviewer-confirmed normal studies to the few-shot memory bank.

    Args:
        store: the app's :class:`~medad.label.store.DetectorStore`.
        config: the app options.
    """

    def __init__(self, store: DetectorStore, config: LabelConfig,
                 description: str = "Add studies labelled 'normal' by a reviewer to the few-shot memory bank") -> None:
        super().__init__(description)
        self.store = store
        self.app_config = config
        self._stats: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {"normal_tag": self.app_config.normal_tag, "shots": self.app_config.shots}

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        from medad.checkpoints import save_checkpoint

        start = time.time()
        ids = normal_images(datastore, self.app_config)
        if not ids:
            return {"status": "nothing to do", "normal_studies": 0,
                    "detail": f"No image has a label tagged {self.app_config.normal_tag!r}. Save one with "
                              f"PUT /datastore/label?image=<id>&tag={self.app_config.normal_tag}."}
        det = self.store.build(use_site=False)
        base_tokens = len(det.memory_bank) if det.memory_bank is not None else 0
        sources = [datastore.get_image_uri(i) for i in ids]
        missing = [i for i, s in zip(ids, sources) if not s or not os.path.exists(s)]
        if missing:
            logger.warning("%d normal-labelled image(s) are no longer in the datastore; skipped", len(missing))
        sources = [s for s in sources if s and os.path.exists(s)]
        det.memory_bank = merge_banks([det.memory_bank, self.store.bank_from(det, sources)])
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        save_checkpoint(det, self.app_config.site_checkpoint,
                        extra={"site_normals": len(sources), "site_normals_sha256": digest,
                               "site_base": self.store.base_id()})
        self._stats = {"normal_studies": len(sources), "base_bank_tokens": base_tokens,
                       "bank_tokens": len(det.memory_bank), "seconds": round(time.time() - start, 2),
                       "ts": int(time.time())}
        logger.info("memory bank: %d -> %d tokens from %d normal studies", base_tokens, len(det.memory_bank),
                    len(sources))
        return {"status": "done", **self._stats}
