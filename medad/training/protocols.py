"""The MVFA training protocols (zero-shot leave-one-dataset-out, few-shot, normal-only few-shot) behind
:func:`medad.training.train`.

* **zero-shot** (:func:`zero_shot`): leave-one-dataset-out: train on the other datasets' ``test`` splits (as the
  reference), each sample with its own dataset's text features, seg loss only where masks exist; lr 1e-4.
* **few-shot** (:func:`few_shot`): k normal + k abnormal support images from the target's ``valid`` split, 11
  augmentations each, fresh adapters, lr 1e-3, then the memory bank from the augmented normals. ``normal_only`` uses
  k normal images and no training (memory bank only; adapters as loaded).

Model selection (``protocol``): ``"clean"`` (default) keeps the epoch with the best validation score (image AUROC +
pixel AUROC of the text branch on held-out validation images: the sources' ``valid`` splits in zero-shot, the
target's non-support ``valid`` images in few-shot; falls back to the last epoch when no validation set with both
classes exists) and fits the normalizers on validation images. ``"paper"`` selects on the target's **test** split
like the reference; every output is labelled ``"paper protocol (test-set model selection)"`` and evaluation
min-max normalizes on the evaluated split (:data:`PROTOCOL_NORMALIZATION`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from medad import __version__
from medad.datasets import ADDataset, Sample, fingerprint, load_batch, sample_support
from medad.evaluation.evaluate import fit_normalizers
from medad.factory import load_detector, text_features
from medad.model.detector import AnomalyDetector

from .augment import NUM_AUGMENTATIONS, augment_support
from .distributed import world_info
from .features import FeatureSet, features_from_samples, features_from_tensors
from .fit import Selector, TrainConfig, fit_adapters, reset_adapters

__all__ = ["PROTOCOL_LABELS", "PROTOCOL_NORMALIZATION", "TrainResult", "check_protocol", "text_table",
           "zero_shot", "few_shot"]

logger = logging.getLogger(__name__)

PROTOCOL_LABELS = {
    "clean": "clean protocol (validation-split model selection)",
    "paper": "paper protocol (test-set model selection)",
}
#: How a model trained under each protocol is evaluated: the stored (validation-fitted) normalizers, or the
#: reference's min/max over the evaluated split.
PROTOCOL_NORMALIZATION = {"clean": "fitted", "paper": "transductive"}


@dataclass
class TrainResult:
    """What a training run produced: the ready detector, per-epoch history, selection, provenance, the written
    checkpoint (when ``out`` was given) and the target's test metrics (when ``evaluate=True``)."""

    detector: AnomalyDetector
    history: list[dict] = field(default_factory=list)
    best_epoch: Optional[int] = None
    provenance: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None
    metrics: Optional[dict] = None


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOL_LABELS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOL_LABELS)}, not {protocol!r}")


def text_table(det: AnomalyDetector, object_names: Sequence[str], backbone: str, weights=None) -> torch.Tensor:
    """``[T, D, 2]`` text features for ``object_names`` (``det``'s own name reuses its features)."""
    others = [n for n in dict.fromkeys(object_names) if n != det.options.object_name]
    # the detector keeps no text tower: one backbone load encodes every other name (features are disk-cached)
    feats = dict(zip(others, text_features(backbone, others, weights))) if others else {}
    feats[det.options.object_name] = det.text_features.detach().cpu()
    return torch.stack([feats[n].cpu() for n in object_names])


def _features(det: AnomalyDetector, samples: Sequence[Sample], has_masks: bool, text_index: int,
              config: TrainConfig, desc: str) -> FeatureSet:
    return features_from_samples(det, samples, has_masks, text_index, device=config.device, amp=config.amp,
                                 batch_size=config.encode_batch_size, num_workers=config.num_workers,
                                 progress=config.progress and world_info().main, desc=desc)


def _provenance(det: AnomalyDetector, protocol: str, mode: str, samples: Sequence[Sample], root: Optional[Path],
                **extra) -> dict:
    return {"medad_version": __version__, "backbone": det.backbone,
            "backbone_sha256": det.metadata.get("backbone_sha256"), "data_fingerprint": fingerprint(samples, root),
            "protocol": protocol, "protocol_label": PROTOCOL_LABELS[protocol], "mode": mode, **extra}


def zero_shot(datasets: Sequence[ADDataset], target: str, *, backbone: Optional[str] = None, weights=None,
              config: TrainConfig, protocol: str = "clean", train_split: str = "test") -> TrainResult:
    """Leave-one-dataset-out training for ``target``: train on every other dataset, return a detector for ``target``.

    Args:
        datasets: all datasets (the target included, it is left out of training).
        target: name of the held-out dataset.
        train_split: split of the source datasets used for training (``"test"`` as the reference).
        protocol: ``"clean"`` (select on the sources' ``valid`` splits) or ``"paper"`` (on the target's test split).
    """
    by_name = {d.name: d for d in datasets}
    if target not in by_name:
        raise ValueError(f"target dataset {target!r} is not among the datasets given: {sorted(by_name)}")
    sources = [d for d in datasets if d.name != target]
    if not sources:
        raise ValueError(f"zero-shot training for {target!r} needs at least one other dataset to train on "
                         "(leave-one-dataset-out); give more datasets with --data.")
    tgt = by_name[target]
    det = load_detector(backbone=backbone, weights=weights, object_name=tgt.object_name, device=config.device,
                        precision=config.precision)
    reset_adapters(det, config.seed)
    names = list(dict.fromkeys(d.object_name for d in sources))
    texts = text_table(det, names + [tgt.object_name], det.backbone, weights)
    train_parts, selectors, used = [], [], []
    for d in sources:
        samples = d.split(train_split)
        used += samples
        train_parts.append(_features(det, samples, d.has_masks, names.index(d.object_name), config,
                                     desc=f"caching {d.name}/{train_split}"))
        if protocol == "clean" and d.splits.get("valid"):
            feats = _features(det, d.split("valid"), d.has_masks, names.index(d.object_name), config,
                              desc=f"caching {d.name}/valid")
            selectors.append(Selector(feats, texts, f"{d.name}/valid"))
    if protocol == "paper":
        feats = _features(det, tgt.split("test"), tgt.has_masks, len(names), config, desc=f"caching {tgt.name}/test")
        selectors.append(Selector(feats, texts, f"{tgt.name}/test"))
    if not any(s.usable for s in selectors):
        logger.warning("no validation set with normal and abnormal images: keeping the last epoch")
    history, best_epoch = fit_adapters(det, FeatureSet.cat(train_parts), texts, config, config.lr or 1e-4, selectors)
    if protocol == "clean":
        calib = [s for d in sources for s in d.splits.get("valid", [])]
        if calib:
            fit_normalizers(det, calib, batch_size=config.encode_batch_size, num_workers=config.num_workers)
    prov = _provenance(det, protocol, "zero-shot", used, None, target=target, sources=[d.name for d in sources],
                       train_split=train_split, epochs=config.epochs, best_epoch=best_epoch,
                       lr=config.lr or 1e-4, batch_size=config.batch_size, seed=config.seed,
                       selection=[s.name for s in selectors if s.usable] or "last epoch")
    return TrainResult(det, history, best_epoch, prov)


def few_shot(dataset: ADDataset, k: int, *, backbone: Optional[str] = None, weights=None, config: TrainConfig,
             protocol: str = "clean", normal_only: bool = False, support_seed: int = 0,
             support: Optional[Sequence[Sample]] = None, detector: Optional[AnomalyDetector] = None) -> TrainResult:
    """k-shot training on ``dataset`` (support from its ``valid`` split), then the memory bank.

    Args:
        k: support images per class.
        normal_only: k normal images only: no training, memory bank only (adapters as loaded: fresh, or those of
            ``detector``).
        support: explicit support samples (e.g. the reference's ``fewshot_seed`` lists); default: random, seeded.
        detector: start from this detector instead of fresh adapters (normal-only: the caller's starting adapters).
        protocol: ``"clean"`` selects on the non-support ``valid`` images and fits normalizers on them;
            ``"paper"`` selects on the test split and uses the reference's image score (max of the fused map) for
            datasets with masks.
    """
    pool = dataset.split("valid")
    if support is None:
        support, rest = sample_support(pool, k, support_seed, abnormal=not normal_only,
                                       require_masks=dataset.has_masks)
    else:
        chosen = set(support)
        rest = [s for s in pool if s not in chosen]
    det = detector or load_detector(backbone=backbone, weights=weights, object_name=dataset.object_name,
                                    device=config.device, precision=config.precision)
    images, masks, labels = load_batch(support, det.image_size)
    aug_images, aug_masks = augment_support(images, masks)
    aug_labels = labels.repeat(NUM_AUGMENTATIONS)
    history, best_epoch, selectors = [], None, []
    lr = config.lr or 1e-3
    if not normal_only:
        reset_adapters(det, config.seed)
        texts = det.text_features.detach().cpu()[None]
        train = features_from_tensors(det, aug_images, aug_labels, aug_masks if dataset.has_masks else None,
                                      device=config.device, batch_size=config.encode_batch_size, amp=config.amp)
        sel_samples = rest if protocol == "clean" else dataset.split("test")
        if sel_samples:
            feats = _features(det, sel_samples, dataset.has_masks, 0, config,
                              desc=f"caching {dataset.name} selection set")
            selectors.append(Selector(feats, texts, f"{dataset.name}/{'valid' if protocol == 'clean' else 'test'}"))
        history, best_epoch = fit_adapters(det, train, texts, config, lr, selectors)
    det.fit_memory_bank(aug_images[aug_labels == 0], batch_size=config.encode_batch_size)
    if protocol == "paper" and dataset.has_masks:
        det.options.image_score_rule = "map_max"
    if protocol == "clean" and rest:
        fit_normalizers(det, rest, batch_size=config.encode_batch_size, num_workers=config.num_workers)
    mode = "normal-only few-shot" if normal_only else "few-shot"
    prov = _provenance(det, protocol, mode, support, dataset.root, target=dataset.name, k=k,
                       n_support=len(support), epochs=0 if normal_only else config.epochs,
                       best_epoch=best_epoch, lr=None if normal_only else lr, batch_size=config.batch_size,
                       seed=config.seed, support_seed=support_seed,
                       selection=[s.name for s in selectors if s.usable] or "last epoch")
    return TrainResult(det, history, best_epoch, prov)
