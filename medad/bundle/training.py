"""Training/evaluation wiring for the bundle in the model zoo's layout: ``train#dataset`` (:class:`AnomalyDatasets`),
``train#trainer`` (:class:`MVFATrainer` over :func:`medad.training.train`) and ``validate#evaluator``
(:class:`MVFAEvaluator` over :func:`medad.evaluation.evaluate`).

MVFA training is not an ignite loop: :mod:`medad.training` caches the frozen backbone's features once and trains only
the adapters on them (zero-shot leave-one-dataset-out, few-shot with 11 augmentations and a memory bank, normal-only
few-shot). :class:`MVFATrainer` / :class:`MVFAEvaluator` give those functions the ``.run()`` interface of a bundle's
``trainer``/``evaluator`` and the ids the zoo checks (``train#trainer#max_epochs``...); they make the same calls as
``medad train`` / ``medad evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from ..io._atomic import atomic_path

__all__ = ["AnomalyDatasets", "MVFATrainer", "MVFAEvaluator"]

log = logging.getLogger(__name__)


class AnomalyDatasets(Dataset):
    """``train#dataset`` / ``validate#dataset``: the MVFA/BMAD-layout dataset(s) under ``data``.

    Args:
        data: one dataset folder (``Brain_AD/{valid,test}/...``) or a folder of them (zero-shot training).
        strict_masks: abnormal images of segmentation datasets must have masks (False: image level only).

    ``datasets`` holds the :class:`~medad.datasets.ADDataset` objects the trainer and evaluator use. As a torch
    ``Dataset`` it lists every sample: ``{"image": path, "label": 0|1, "mask": path or "", "dataset": name,
    "split": split}`` (file names only; images are read by the training code at the working size).
    """

    def __init__(self, data: str | os.PathLike, strict_masks: bool = True) -> None:
        from ..datasets import discover_datasets

        if not Path(data).exists():
            raise FileNotFoundError(f"dataset folder {data} does not exist (set --dataset_dir to an MVFA/BMAD-layout "
                                    "dataset, e.g. Brain_AD/{valid,test}/{good,Ungood}/...)")
        self.data = str(data)
        self.datasets = discover_datasets(data, strict_masks=strict_masks)
        self._items = [(ds.name, split, s) for ds in self.datasets for split, samples in ds.splits.items()
                       for s in samples]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict:
        name, split, s = self._items[index]
        return {"image": str(s.image), "label": int(s.label), "mask": str(s.mask) if s.mask else "",
                "dataset": name, "split": split}


class MVFATrainer:
    """The bundle's ``train#trainer``: ``run()`` is :func:`medad.training.train` with the config's arguments; it
    writes ``model_path`` (a medad checkpoint: adapters, normalizers, memory bank, provenance).

    Args:
        dataset: :class:`AnomalyDatasets` (``train#dataset``).
        max_epochs: training epochs (``train#trainer#max_epochs``; replaces ``config.epochs``).
        mode: ``"few-shot"``, ``"zero-shot"`` or ``"normal-only"`` (:data:`medad.training.MODES`).
        k: support images per class (few-shot modes). target: dataset name (default: the only one).
        backbone, weights: as :func:`medad.load_detector` (None = ViT-L-14-336 with the cached/imported weights).
        adapters: starting adapters, ``normal-only`` only (an error with the other modes, which train fresh ones).
        config: :class:`~medad.training.TrainConfig` (lr, batch size, seed, device...; its ``epochs`` is replaced
            by ``max_epochs``).
        inferer: ``train#inferer``. MVFA's training loop runs the adapters on cached backbone features, not through
            an inferer; this is the inferer the trained network is run with (kept as ``self.inferer`` for the
            zoo's property check and for callers: ``inferer(slices, network)``).
        protocol: ``"clean"`` (model selection on validation data) or ``"paper"`` (on the test split, labelled so).
        support_seed: seed of the k-shot draw. model_path: checkpoint to write (rank 0).
        history_path: per-epoch history + provenance as JSON (rank 0), or None.
    """

    def __init__(self, dataset: AnomalyDatasets, max_epochs: int = 50, mode: str = "few-shot", k: int = 4,
                 target: Optional[str] = None, backbone: Optional[str] = None, weights: Optional[str] = None,
                 adapters: Optional[str] = None, config: Any = None, inferer: Any = None, protocol: str = "clean",
                 support_seed: int = 0, model_path: str | os.PathLike = "eval/model.pt",
                 history_path: Optional[str | os.PathLike] = None) -> None:
        self.dataset, self.max_epochs = dataset, int(max_epochs)
        self.mode, self.k, self.target = mode, int(k), target
        self.backbone, self.weights, self.adapters = backbone, weights, adapters
        self.config, self.inferer = config, inferer
        self.protocol, self.support_seed = protocol, int(support_seed)
        self.model_path = Path(model_path)
        self.history_path = Path(history_path) if history_path else None
        self.result = None

    def run(self):
        """Train; returns the :class:`~medad.training.TrainResult` (also kept as ``self.result``)."""
        from .. import training

        config = dataclasses.replace(self.config or training.TrainConfig(), epochs=self.max_epochs)
        self.result = training.train(self.dataset.datasets, self.mode, target=self.target, k=self.k,
                                     backbone=self.backbone, weights=self.weights, adapters=self.adapters,
                                     config=config, protocol=self.protocol, support_seed=self.support_seed,
                                     out=self.model_path, history_path=self.history_path)
        return self.result


class MVFAEvaluator:
    """The bundle's ``validate#evaluator`` (``evaluate.json``): :func:`medad.evaluation.evaluate` of the model in
    ``model_path`` on ``target``'s ``split``; ``run()`` returns the metrics and writes them to ``metrics_path``.

    Args:
        dataset: :class:`AnomalyDatasets`. target: as :class:`MVFATrainer`.
        model_path: the checkpoint to evaluate. backbone, weights: as :func:`medad.load_detector`. device: torch device.
        split: ``"test"``. normalization: ``"fitted"`` (stored normalizers, as deployed) or ``"transductive"``
            (min/max over the split, the reference's protocol). batch_size: images per model call.
    """

    def __init__(self, dataset: AnomalyDatasets, model_path: str | os.PathLike, target: Optional[str] = None,
                 backbone: Optional[str] = None, weights: Optional[str] = None, device: str = "cpu",
                 split: str = "test", normalization: str = "fitted", batch_size: int = 16,
                 metrics_path: Optional[str | os.PathLike] = None) -> None:
        self.dataset, self.model_path, self.target = dataset, str(model_path), target
        self.backbone, self.weights, self.device = backbone, weights, str(device)
        self.split, self.normalization, self.batch_size = split, normalization, int(batch_size)
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.metrics: Optional[dict] = None

    def run(self) -> dict:
        from ..evaluation import evaluate
        from ..factory import load_detector
        from ..training import pick_target

        if not Path(self.model_path).is_file():
            raise FileNotFoundError(f"no model to evaluate at {self.model_path}: run configs/train.json first or "
                                    "pass --model_path (e.g. models/model.pt, the shipped demo model)")
        ds = pick_target(self.dataset.datasets, self.target)
        det = load_detector(backbone=self.backbone, weights=self.weights, adapters=self.model_path,
                            object_name=ds.object_name, device=self.device)
        m = evaluate(det, ds, self.split, normalization=self.normalization, batch_size=self.batch_size,
                     progress=False)
        m["model"] = self.model_path
        m["backbone"] = str(det.backbone)
        m["protocol"] = det.metadata.get("protocol_label", "")
        if self.metrics_path is not None:
            with atomic_path(self.metrics_path) as tmp:
                tmp.write_text(json.dumps(m, indent=1, default=str))
        log.info("%s/%s: %s", ds.name, self.split, ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                                              if k.endswith(("auroc", "ap", "f1_max", "aupro"))
                                                              and isinstance(v, float)))
        self.metrics = m
        return m
