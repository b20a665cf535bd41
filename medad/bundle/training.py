"""Training/evaluation wiring for the bundle: ``trainer`` and ``evaluator`` objects over :func:`medad.training.train`
and :func:`medad.evaluation.evaluate`, and a small synthetic MVFA-layout dataset for trying the configs.

MVFA training is not an ignite loop: :mod:`medad.training` caches the frozen backbone's features once and trains only
the adapters on them (zero-shot leave-one-dataset-out, few-shot with 11 augmentations and a memory bank, normal-only
few-shot). :class:`MVFATrainer` / :class:`MVFAEvaluator` give those functions the ``.run()`` interface of a bundle's
``trainer``/``evaluator``; they make the same calls as ``medad train`` / ``medad evaluate``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io._atomic import atomic_path

__all__ = ["MVFATrainer", "MVFAEvaluator", "make_demo_dataset"]

log = logging.getLogger(__name__)


class MVFATrainer:
    """The bundle's ``trainer``: ``run()`` is :func:`medad.training.train` with the config's arguments; it writes
    ``model_path`` (a medad adapter checkpoint: adapters, normalizers, memory bank, provenance).

    Args:
        datasets: :class:`~medad.datasets.ADDataset` list (``discover_datasets(dataset_dir)``).
        mode: ``"few-shot"``, ``"zero-shot"`` or ``"normal-only"`` (:data:`medad.training.MODES`).
        k: support images per class (few-shot modes). target: dataset name (default: the only one).
        backbone, weights: as :func:`medad.load_detector` (None = ViT-L-14-336 with the cached/imported weights).
        adapters: starting adapters, ``normal-only`` only (an error with the other modes, which train fresh ones).
        config: :class:`~medad.training.TrainConfig` (epochs, lr, batch size, seed, device...).
        protocol: ``"clean"`` (model selection on validation data) or ``"paper"`` (on the test split, labelled so).
        support_seed: seed of the k-shot draw. model_path: checkpoint to write (rank 0).
        history_path: per-epoch history + provenance as JSON (rank 0), or None.
    """

    def __init__(self, datasets: Sequence, mode: str = "few-shot", k: int = 4, target: Optional[str] = None,
                 backbone: Optional[str] = None, weights: Optional[str] = None, adapters: Optional[str] = None,
                 config: Any = None, protocol: str = "clean", support_seed: int = 0,
                 model_path: str | os.PathLike = "models/model.pt",
                 history_path: Optional[str | os.PathLike] = None) -> None:
        self.datasets = list(datasets)
        self.mode, self.k, self.target = mode, int(k), target
        self.backbone, self.weights, self.adapters = backbone, weights, adapters
        self.config, self.protocol, self.support_seed = config, protocol, int(support_seed)
        self.model_path = Path(model_path)
        self.history_path = Path(history_path) if history_path else None
        self.result = None

    def run(self):
        """Train; returns the :class:`~medad.training.TrainResult` (also kept as ``self.result``)."""
        from .. import training

        self.result = training.train(self.datasets, self.mode, target=self.target, k=self.k, backbone=self.backbone,
                                     weights=self.weights, adapters=self.adapters, config=self.config,
                                     protocol=self.protocol, support_seed=self.support_seed, out=self.model_path,
                                     history_path=self.history_path)
        return self.result


class MVFAEvaluator:
    """The bundle's ``evaluator`` for ``evaluate.json``: :func:`medad.evaluation.evaluate` of the model in
    ``adapters`` on ``target``'s ``split``; ``run()`` returns the metrics and writes them to ``metrics_path``.

    Args:
        datasets, target: as :class:`MVFATrainer`.
        adapters: the checkpoint to evaluate (the bundle's ``models/model.pt``). backbone, weights: as
            :func:`medad.load_detector`. device: torch device.
        split: ``"test"``. normalization: ``"fitted"`` (stored normalizers, as deployed) or ``"transductive"``
            (min/max over the split, the reference's protocol). batch_size: images per model call.
    """

    def __init__(self, datasets: Sequence, adapters: str | os.PathLike, target: Optional[str] = None,
                 backbone: Optional[str] = None, weights: Optional[str] = None, device: str = "cpu",
                 split: str = "test", normalization: str = "fitted", batch_size: int = 16,
                 metrics_path: Optional[str | os.PathLike] = None) -> None:
        self.datasets, self.adapters, self.target = list(datasets), adapters, target
        self.backbone, self.weights, self.device = backbone, weights, str(device)
        self.split, self.normalization, self.batch_size = split, normalization, int(batch_size)
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.metrics: Optional[dict] = None

    def run(self) -> dict:
        import medad
        from ..evaluation import evaluate
        from ..training import pick_target

        if not Path(str(self.adapters)).is_file() and str(self.adapters) != "demo":
            raise FileNotFoundError(f"no model to evaluate at {self.adapters}: run configs/train.json first or "
                                    "pass --model_path /path/to/adapters.pt")
        ds = pick_target(self.datasets, self.target)
        det = medad.load_detector(backbone=self.backbone, weights=self.weights, adapters=self.adapters,
                                  object_name=ds.object_name, device=self.device)
        m = evaluate(det, ds, self.split, normalization=self.normalization, batch_size=self.batch_size,
                     progress=False)
        m["model"] = str(self.adapters)
        m["protocol"] = det.metadata.get("protocol_label", "")
        if self.metrics_path is not None:
            with atomic_path(self.metrics_path) as tmp:
                tmp.write_text(json.dumps(m, indent=1, default=str))
        log.info("%s/%s: %s", ds.name, self.split, ", ".join(f"{k} {v:.4f}" for k, v in m.items()
                                                              if k.endswith(("auroc", "ap", "f1_max", "aupro"))
                                                              and isinstance(v, float)))
        self.metrics = m
        return m


# ---------------------------------------------------------------------------------------------------- demo data
def _slices_240(vol: torch.Tensor, affine: np.ndarray, ranges, view: str, size: int, mode: str) -> torch.Tensor:
    """Axial RAS slices of ``vol [X, Y, Z]`` scaled by ``ranges`` (None: as is), in ``view`` layout, padded to a
    square and resized to ``size`` like :class:`~medad.inference.runner.VolumeRunner` does -> ``[Z, size, size]``."""
    from ..transforms import VIEWS, RASSlicer, apply_ranges, square_pad_width

    slicer = RASSlicer(tuple(vol.shape), affine, "axial", "RAS")
    x = slicer.read(vol, 0, slicer.n_slices)
    if ranges is not None:
        x = apply_ranges(x, ranges)
    x = VIEWS[view][0](x).float()
    (t, b), (left, right) = square_pad_width(tuple(x.shape[-2:]))
    x = F.pad(x[:, None], (left, right, t, b))
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")[:, 0]
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[:, 0].clamp(0, 1)


def make_demo_dataset(root: str | os.PathLike, name: str = "Brain_AD", seed: int = 0, n_volumes: int = 2,
                      shape: tuple[int, int, int] = (96, 96, 20), min_lesion_px: int = 40,
                      view: str = "radiological", size: int = 240) -> Path:
    """Write a small MVFA-layout dataset of synthetic FLAIR-like phantom slices (``medad.synthetic.make_mr_phantom``):
    ``<root>/<name>/{valid,test}/{good,Ungood}/img/*.png`` and ``Ungood/anomaly_mask/*.png``.

    Volume ``i`` (seed ``seed + i``) goes to ``valid`` for the first half of ``n_volumes`` and to ``test`` for the
    rest (a patient-level split). Axial slices are scaled with the MR rule of the volume runner
    (``medad.transforms.make_intensity("mr")``), shown in ``view`` and resized to ``size``; a slice is ``Ungood`` with
    at least ``min_lesion_px`` lesion pixels, ``good`` with none and some anatomy, else left out. For trying the
    train/evaluate configs only: the phantoms are not real anatomy.

    Returns:
        ``<root>/<name>``.
    """
    from monai.data import MetaTensor
    from PIL import Image

    from ..synthetic import make_mr_phantom
    from ..transforms import make_intensity

    if n_volumes < 2:
        raise ValueError("n_volumes must be >= 2 (at least one volume for valid and one for test)")
    out = Path(root) / name
    intensity = make_intensity("mr")
    counts: dict[str, int] = {}
    for i in range(n_volumes):
        split = "valid" if i < n_volumes // 2 else "test"
        img, mask, affine = make_mr_phantom(seed + i, shape)
        vol = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
        ranges = intensity.ranges(MetaTensor(vol[None], affine=torch.as_tensor(affine), meta={"modality": "MR"}))
        slices = _slices_240(vol, affine, ranges, view, size, "bicubic")
        masks = _slices_240(torch.from_numpy(mask.astype(np.float32)), affine, None, view, size, "nearest") > 0.5
        for z in range(slices.shape[0]):
            lesion = int(masks[z].sum())
            anatomy = float((slices[z] > 0.1).float().mean())
            if lesion >= min_lesion_px:
                cls = "Ungood"
            elif lesion == 0 and anatomy > 0.2:
                cls = "good"
            else:
                continue
            stem = f"phantom{seed + i:03d}_z{z:03d}"
            (out / split / cls / "img").mkdir(parents=True, exist_ok=True)
            Image.fromarray((slices[z].numpy() * 255).round().astype(np.uint8)).save(out / split / cls / "img" /
                                                                                     f"{stem}.png")
            if cls == "Ungood":
                (out / split / cls / "anomaly_mask").mkdir(parents=True, exist_ok=True)
                Image.fromarray(masks[z].numpy().astype(np.uint8) * 255).save(out / split / cls / "anomaly_mask" /
                                                                              f"{stem}.png")
            counts[f"{split}/{cls}"] = counts.get(f"{split}/{cls}", 0) + 1
    missing = [k for k in ("valid/good", "valid/Ungood", "test/good", "test/Ungood") if not counts.get(k)]
    if missing:
        raise ValueError(f"the phantoms gave no {missing} slices; use more volumes or another seed")
    log.info("wrote demo dataset %s: %s", out, counts)
    return out
