""":func:`train`: the one entry point of MVFA adapter training. ``medad train``, the bundle's ``MVFATrainer`` and
``benchmarks/reproduce_paper_table.py`` all call it; the mode dispatch and the rule for starting adapters live here.

Starting adapters (``adapters=``) apply to ``mode="normal-only"`` only: that mode does not train, it builds the
memory bank on top of the adapters it is given (e.g. zero-shot ones; fresh ones when None). ``"zero-shot"`` and
``"few-shot"`` always train fresh, seeded adapters (the protocols of the paper), so a starting checkpoint there would
be discarded while its other state (normalizers, scoring options) leaked into the result: it is an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence

from medad.checkpoints import save_checkpoint
from medad.datasets import ADDataset, Sample
from medad.evaluation.evaluate import evaluate as evaluate_detector
from medad.factory import load_detector
from medad.io._atomic import atomic_path

from .distributed import world_info
from .fit import TrainConfig
from .protocols import PROTOCOL_LABELS, PROTOCOL_NORMALIZATION, TrainResult, check_protocol, few_shot, zero_shot

__all__ = ["MODES", "pick_target", "train"]

logger = logging.getLogger(__name__)

#: Training modes of :func:`train`.
MODES = ("few-shot", "zero-shot", "normal-only")


def pick_target(datasets: Sequence[ADDataset], target: Optional[str] = None) -> ADDataset:
    """The dataset named ``target`` (default: the only one given); ValueError naming the choices otherwise."""
    names = [d.name for d in datasets]
    target = target or (names[0] if len(names) == 1 else None)
    if target is None or target not in names:
        raise ValueError(f"choose the target dataset (--target) among {names}")
    return next(d for d in datasets if d.name == target)


def train(datasets: ADDataset | Sequence[ADDataset], mode: str = "few-shot", *, target: Optional[str] = None,
          k: int = 4, backbone: Optional[str] = None, weights: Optional[str | os.PathLike] = None,
          adapters: Optional[str | os.PathLike] = None, config: Optional[TrainConfig] = None,
          protocol: str = "clean", support_seed: int = 0, support: Optional[Sequence[Sample]] = None,
          train_split: str = "test", out: Optional[str | os.PathLike] = None,
          history_path: Optional[str | os.PathLike] = None, evaluate: bool = False) -> TrainResult:
    """Train MVFA adapters for ``target`` and return the ready detector.

    Args:
        datasets: the datasets (:func:`medad.datasets.discover_datasets`); zero-shot trains on all but ``target``.
        mode: ``"few-shot"`` (k normal + k abnormal support images from the target's ``valid`` split, 11
            augmentations, fresh adapters, memory bank), ``"zero-shot"`` (leave-one-dataset-out on the sources'
            ``train_split``) or ``"normal-only"`` (k normal images, memory bank only, no training).
        target: target dataset name (default: the only dataset given).
        k: support images per class (few-shot modes).
        backbone, weights: as :func:`medad.load_detector` (None: ViT-L-14-336, or the ``adapters`` checkpoint's).
        adapters: starting adapters, ``mode="normal-only"`` only (see the module docstring).
        config: :class:`~medad.training.fit.TrainConfig` (epochs, lr, batch size, seed, device...).
        protocol: ``"clean"`` (model selection and normalizers on validation data) or ``"paper"`` (selection on the
            test split, labelled so in every output).
        support_seed: seed of the k-shot draw; ``support``: explicit support samples instead.
        train_split: split of the zero-shot source datasets used for training (``"test"`` as the reference).
        out: checkpoint to write (adapters, normalizers, memory bank, provenance); ``history_path``: per-epoch
            history + provenance as JSON. Both written by rank 0 only.
        evaluate: also evaluate on the target's test split (rank 0), normalized as the protocol says
            (:data:`~medad.training.protocols.PROTOCOL_NORMALIZATION`); the metrics go to ``result.metrics``.

    Returns:
        :class:`~medad.training.protocols.TrainResult`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, not {mode!r}")
    check_protocol(protocol)
    if adapters is not None and mode != "normal-only":
        raise ValueError(f"starting adapters ({adapters}) apply to mode 'normal-only' only: {mode} trains fresh "
                         "adapters (drop --adapters, or use --mode normal-only to build a memory bank on them)")
    datasets = [datasets] if isinstance(datasets, ADDataset) else list(datasets)
    tgt = pick_target(datasets, target)
    config = config or TrainConfig()
    main = world_info().main
    if main:
        logger.info("%s training for %s on %s, %s", mode, tgt.name, [d.name for d in datasets],
                    PROTOCOL_LABELS[protocol])
    if mode == "zero-shot":
        result = zero_shot(datasets, tgt.name, backbone=backbone, weights=weights, config=config, protocol=protocol,
                           train_split=train_split)
    else:
        det = None
        if adapters is not None:
            det = load_detector(backbone=backbone, weights=weights, adapters=adapters, object_name=tgt.object_name,
                                device=config.device, precision=config.precision)
        result = few_shot(tgt, k, backbone=backbone, weights=weights, config=config, protocol=protocol,
                          normal_only=mode == "normal-only", support_seed=support_seed, support=support, detector=det)
    if main:
        if out is not None:
            result.checkpoint = Path(save_checkpoint(result.detector, out, extra=result.provenance) or out)
            logger.info("saved adapters to %s (best epoch %s, %s)", result.checkpoint, result.best_epoch,
                        PROTOCOL_LABELS[protocol])
        if history_path is not None:
            with atomic_path(history_path) as tmp:
                tmp.write_text(json.dumps({"provenance": result.provenance, "history": result.history}, indent=1,
                                          default=str))
        if evaluate:
            result.metrics = evaluate_detector(result.detector, tgt, "test", batch_size=config.batch_size,
                                               num_workers=config.num_workers, progress=config.progress,
                                               normalization=PROTOCOL_NORMALIZATION[protocol])
            result.metrics["protocol"] = PROTOCOL_LABELS[protocol]
    return result
