"""Adapter training: the cached-feature training loop and the zero-shot / few-shot protocols of MVFA.

Speed design (spec section 8 lists what the reference does instead):

* The backbone is frozen and nothing before the first adapter level changes, so the hidden states after that block
  (block 6 of ViT-L) are computed **once**, under ``no_grad``, and cached (:class:`FeatureSet`); every epoch only runs
  the adapters and the later blocks (:meth:`MVFAModel.forward_levels`), with gradients into the adapters only.
* Real batching (any batch size), samples of different datasets mixed in a batch with their own text features.
* bf16 autocast on CUDA; Adam ``betas=(0.5, 0.999)``; seeded initialisation and batch order.
* Multi-process data parallel through ``torchrun`` (:mod:`medad.engine.distributed`).

Protocols:

* **zero-shot** (:func:`train_zero_shot`): leave-one-dataset-out: train on the other datasets' ``test`` splits (as
  the reference), each sample with its own dataset's text features, seg loss only where masks exist; lr 1e-4.
* **few-shot** (:func:`train_few_shot`): k normal + k abnormal support images from the target's ``valid`` split,
  11 augmentations each, fresh adapters, lr 1e-3, then the memory bank from the augmented normals. ``normal_only``
  uses k normal images and no training (memory bank only; adapters as loaded).

Model selection (``protocol``): ``"clean"`` (default) keeps the epoch with the best validation score (image AUROC +
pixel AUROC of the text branch on held-out validation images: the sources' ``valid`` splits in zero-shot, the
target's non-support ``valid`` images in few-shot; falls back to the last epoch when no validation set with both
classes exists). ``"paper"`` selects on the target's **test** split like the reference; every output is labelled
``"paper protocol (test-set model selection)"``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medad import __version__
from medad.checkpoints import save_checkpoint
from medad.model import scoring
from medad.model.detector import AnomalyDetector

from .augment import augment_support
from .datasets import ADDataset, ImageMaskDataset, Sample, fingerprint, load_batch, sample_support
from .distributed import DistInfo, all_reduce_gradients, broadcast_parameters, shard, world_info
from .losses import MVFALoss
from .metrics import PixelMetrics, auroc

__all__ = ["TrainConfig", "FeatureSet", "Selector", "TrainResult", "PROTOCOL_LABELS", "encode_features",
           "features_from_tensors", "features_from_samples", "accumulate_gradients", "fit_adapters", "reset_adapters",
           "text_table", "train_zero_shot", "train_few_shot"]

logger = logging.getLogger(__name__)

PROTOCOL_LABELS = {
    "clean": "clean protocol (validation-split model selection)",
    "paper": "paper protocol (test-set model selection)",
}


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``lr=None`` means the protocol default (1e-4 zero-shot, 1e-3 few-shot)."""

    epochs: int = 50
    lr: Optional[float] = None
    batch_size: int = 16
    seed: int = 111
    eval_every: int = 1
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    det_loss: str = "bce"
    num_workers: int = 0
    encode_batch_size: int = 32
    progress: bool = True
    lr_schedule: str = "constant"  # or "cosine" (per step, to 0 at the last step); the reference uses constant


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@dataclass
class FeatureSet:
    """Cached frozen features and targets of ``M`` images.

    Attributes:
        hidden: ``[M, N, C]`` hidden states after the first adapter level's block (class token first).
        labels: ``[M]`` 0/1.
        text_index: ``[M]`` row of the text table (``[T, D, 2]``) each sample is scored against.
        has_mask: ``[M]`` bool: the sample takes part in the seg loss (its dataset has masks).
        masks: ``[K, 1, S, S]`` bool masks of the abnormal samples with masks; ``mask_row [M]`` indexes it (-1 = zero).
    """

    hidden: torch.Tensor
    labels: torch.Tensor
    text_index: torch.Tensor
    has_mask: torch.Tensor
    masks: torch.Tensor
    mask_row: torch.Tensor
    size: int = 240

    def __len__(self) -> int:
        return int(self.labels.numel())

    def batch(self, idx: torch.Tensor, device: torch.device):
        """``(hidden, labels, text_index, masks [B,1,S,S] or None, has_mask)`` of rows ``idx`` on ``device``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        has = self.has_mask[idx]
        masks = None
        if bool(has.any()):
            rows = self.mask_row[idx]
            masks = torch.zeros(len(idx), 1, self.size, self.size, dtype=torch.float32)
            sel = rows >= 0
            if bool(sel.any()):
                masks[sel] = self.masks[rows[sel]].float()
            masks = masks.to(device)
        return (self.hidden[idx].to(device, non_blocking=True), self.labels[idx].to(device),
                self.text_index[idx], masks, has)

    @staticmethod
    def cat(parts: Sequence["FeatureSet"]) -> "FeatureSet":
        offsets, total = [], 0
        for p in parts:
            offsets.append(total)
            total += p.masks.shape[0]
        rows = [torch.where(p.mask_row >= 0, p.mask_row + o, p.mask_row) for p, o in zip(parts, offsets)]
        return FeatureSet(torch.cat([p.hidden for p in parts]), torch.cat([p.labels for p in parts]),
                          torch.cat([p.text_index for p in parts]), torch.cat([p.has_mask for p in parts]),
                          torch.cat([p.masks for p in parts]), torch.cat(rows), parts[0].size)


@torch.no_grad()
def encode_features(det: AnomalyDetector, batches: Iterable[dict], text_index: int, has_masks: bool,
                    device: torch.device, amp: bool = True, total: Optional[int] = None,
                    progress: bool = False, desc: str = "caching features") -> FeatureSet:
    """Run the frozen prefix once over ``batches`` of ``{"image" [B,3,S,S], "mask" [B,1,S,S], "label" [B]}``.

    Hidden states are stored in bf16 on CUDA (fp32 on CPU) on the host, so large training pools fit.
    """
    det.model.eval()
    store = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden, labels, masks, mask_row, n_masks = [], [], [], [], 0
    for b in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
        with _autocast(device, amp):
            h = det.model.forward_prefix(det.prepare(b["image"].to(device)))
        hidden.append(h.to("cpu", store))
        lab = torch.as_tensor(b["label"]).long().flatten()
        labels.append(lab)
        rows = torch.full((len(lab),), -1, dtype=torch.long)
        if has_masks:
            m = b["mask"] > 0.5
            keep = (lab == 1) & m.flatten(1).any(1)
            rows[keep] = torch.arange(n_masks, n_masks + int(keep.sum()))
            n_masks += int(keep.sum())
            masks.append(m[keep].cpu())
        mask_row.append(rows)
    if not hidden:
        raise ValueError("no images to encode")
    size = det.image_size
    m = torch.cat(masks) if masks else torch.zeros(0, 1, size, size, dtype=torch.bool)
    if m.numel() and tuple(m.shape[-2:]) != (size, size):
        raise ValueError(f"masks must be {size}x{size} (the working size); got {tuple(m.shape[-2:])}")
    labels_t = torch.cat(labels)
    return FeatureSet(torch.cat(hidden), labels_t, torch.full_like(labels_t, text_index),
                      torch.full((len(labels_t),), bool(has_masks)), m, torch.cat(mask_row), size)


def features_from_tensors(det: AnomalyDetector, images: torch.Tensor, labels: torch.Tensor,
                          masks: Optional[torch.Tensor] = None, text_index: int = 0, device: str | torch.device = "cpu",
                          batch_size: int = 32, amp: bool = True) -> FeatureSet:
    """:class:`FeatureSet` of in-memory ``images [M,3,S,S]`` (+ ``masks [M,1,S,S]``, None = no seg loss)."""
    masks_ = masks if masks is not None else torch.zeros(images.shape[0], 1, *images.shape[-2:])
    batches = ({"image": images[i:i + batch_size], "mask": masks_[i:i + batch_size],
                "label": labels[i:i + batch_size]} for i in range(0, images.shape[0], batch_size))
    return encode_features(det, batches, text_index, masks is not None, torch.device(device), amp)


def features_from_samples(det: AnomalyDetector, samples: Sequence[Sample], has_masks: bool, text_index: int,
                          config: TrainConfig, desc: str = "caching features") -> FeatureSet:
    """:class:`FeatureSet` of image files (loaded with :class:`ImageMaskDataset`, resized to the working size)."""
    ds = ImageMaskDataset(samples, has_masks, size=det.image_size)
    loader = DataLoader(ds, batch_size=config.encode_batch_size, num_workers=config.num_workers, shuffle=False)
    return encode_features(det, loader, text_index, has_masks, torch.device(config.device), config.amp,
                           total=len(loader), progress=config.progress and world_info().main, desc=desc)


class Selector:
    """Validation score of the current adapters on cached features: image AUROC (det branch) + pixel AUROC
    (seg branch, only when masks exist), text branch only (no normalizers needed: AUROC is rank-based).

    Args:
        features: cached features of the selection images (per set, one text row).
        texts: ``[T, D, 2]`` text table.
        name: label for logs.
    """

    def __init__(self, features: FeatureSet, texts: torch.Tensor, name: str = "valid", batch_size: int = 32):
        self.features, self.texts, self.name, self.batch_size = features, texts, name, batch_size
        labels = features.labels
        self.usable = bool((labels == 0).any() and (labels == 1).any())

    @torch.no_grad()
    def __call__(self, det: AnomalyDetector, device: torch.device, amp: bool = True) -> dict[str, float]:
        det.model.eval()
        f = self.features
        scores, pm, with_masks = [], PixelMetrics(aupro=False), bool(f.has_mask.any())
        for start in range(0, len(f), self.batch_size):
            idx = torch.arange(start, min(start + self.batch_size, len(f)))
            h, _, tix, masks, _ = f.batch(idx, device)
            with _autocast(device, amp):
                seg, dt = det.model.forward_levels(h)
            text = self.texts[tix].to(device)
            scores.append(scoring.patch_probs(dt.float(), text).mean(-1).sum(0).cpu())
            if with_masks and masks is not None:
                pm.update(scoring.level_maps(seg.float(), text, (f.size, f.size)).sum(0), masks[:, 0])
        out = {"image_auroc": auroc(torch.cat(scores), f.labels)}
        out["pixel_auroc"] = pm.compute()["pixel_auroc"] if with_masks else math.nan
        out["score"] = out["image_auroc"] + (0.0 if math.isnan(out["pixel_auroc"]) else out["pixel_auroc"])
        return out


@dataclass
class TrainResult:
    """What a training run produced: the ready detector, per-epoch history, selection and provenance."""

    detector: AnomalyDetector
    history: list[dict] = field(default_factory=list)
    best_epoch: Optional[int] = None
    provenance: dict = field(default_factory=dict)
    checkpoint: Optional[Path] = None


def reset_adapters(det: AnomalyDetector, seed: int) -> None:
    """Fresh, seeded adapter initialisation (PyTorch's default ``Linear`` init), identical on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in det.model.adapters.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
    broadcast_parameters(det.model.adapters.parameters())


def accumulate_gradients(det: AnomalyDetector, train: FeatureSet, texts: torch.Tensor, global_idx: torch.Tensor,
                         loss_fn: MVFALoss, device: torch.device, amp: bool = True) -> tuple[int, dict[str, float]]:
    """Gradient of the mean loss over the global batch ``global_idx`` into the adapters' ``.grad``.

    Each rank computes its slice (:func:`~medad.engine.distributed.shard`) with the loss scaled by the slice's share
    of the global batch, then the gradients are summed over ranks: the result equals the single-process gradient.

    Returns:
        ``(local batch size, {"loss", "seg", "det"} local means)``.
    """
    info = world_info()
    local_idx = shard(global_idx, info.rank, info.world_size)
    losses = {"loss": 0.0, "seg": 0.0, "det": 0.0}
    if len(local_idx):
        h, labels, tix, masks, has = train.batch(local_idx, device)
        with _autocast(device, amp):
            seg, dt = det.model.forward_levels(h)
        out = loss_fn(seg, dt, texts[tix.to(texts.device)], labels, masks, has)
        (out["loss"] * (len(local_idx) / len(global_idx))).backward()
        losses = {k: float(out[k].detach()) for k in losses}
    all_reduce_gradients(det.model.adapters.parameters(), op="sum")
    return len(local_idx), losses


def fit_adapters(det: AnomalyDetector, train: FeatureSet, texts: torch.Tensor, config: TrainConfig, lr: float,
                 selectors: Sequence[Selector] = (), on_epoch: Optional[Callable[[int, dict], None]] = None
                 ) -> tuple[list[dict], Optional[int]]:
    """Train the adapters of ``det`` on cached features.

    Args:
        det: detector whose ``model.adapters`` train (the backbone stays frozen).
        train: cached training features.
        texts: ``[T, D, 2]`` text table indexed by ``train.text_index``.
        lr: Adam learning rate (betas 0.5, 0.999).
        selectors: validation sets; the epoch with the best mean score is kept (none: the last epoch).

    Returns:
        ``(history, best_epoch)``; ``det`` holds the selected adapters afterwards. Under ``torchrun`` every rank
        takes its slice of each global batch of ``config.batch_size``; the result equals one process.
    """
    info: DistInfo = world_info()
    device = torch.device(config.device)
    model, params = det.model, [p for p in det.model.adapters.parameters()]
    for p in params:
        p.requires_grad_(True)
    texts = texts.to(device)
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    if config.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {config.lr_schedule!r}")
    loss_fn = MVFALoss(det_loss=config.det_loss)
    gen = torch.Generator().manual_seed(config.seed)
    selectors = [s for s in selectors if s.usable]
    history, best, best_epoch, best_state = [], -math.inf, None, None
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = max(1, config.epochs * steps_per_epoch)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
             if config.lr_schedule == "cosine" else None)
    bar = tqdm(total=config.epochs * steps_per_epoch, desc="training adapters",
               disable=not (config.progress and info.main))
    for epoch in range(config.epochs):
        model.train()
        t0, sums, n_seen = time.time(), {"loss": 0.0, "seg": 0.0, "det": 0.0}, 0
        order = torch.randperm(len(train), generator=gen)
        for start in range(0, len(train), config.batch_size):
            opt.zero_grad(set_to_none=True)
            n_local, losses = accumulate_gradients(det, train, texts, order[start:start + config.batch_size],
                                                   loss_fn, device, config.amp)
            for k in sums:
                sums[k] += losses[k] * n_local
            n_seen += n_local
            opt.step()
            if sched is not None:
                sched.step()
            bar.update(1)
        record = {"epoch": epoch + 1, **{k: v / max(n_seen, 1) for k, v in sums.items()}, "time_s": time.time() - t0}
        last = epoch + 1 == config.epochs
        if selectors and ((epoch + 1) % config.eval_every == 0 or last):
            results = [s(det, device, config.amp) for s in selectors]
            record["val_score"] = sum(r["score"] for r in results) / len(results)
            for s, r in zip(selectors, results):
                record[f"{s.name}/image_auroc"] = r["image_auroc"]
                record[f"{s.name}/pixel_auroc"] = r["pixel_auroc"]
            if record["val_score"] > best:
                best, best_epoch = record["val_score"], epoch + 1
                best_state = copy.deepcopy(model.adapters.state_dict())
        history.append(record)
        bar.set_postfix(epoch=epoch + 1, loss=f"{record['loss']:.3f}",
                        **({"val": f"{record['val_score']:.3f}"} if "val_score" in record else {}))
        if on_epoch is not None:
            on_epoch(epoch + 1, record)
    bar.close()
    if best_state is not None:
        model.adapters.load_state_dict(best_state)
    else:
        best_epoch = config.epochs if config.epochs else None
    for p in params:
        p.requires_grad_(False)
    model.eval()
    return history, best_epoch


def text_table(det: AnomalyDetector, object_names: Sequence[str], backbone: str, weights=None) -> torch.Tensor:
    """``[T, D, 2]`` text features for ``object_names`` (``det``'s own name reuses its features)."""
    from ..factory import text_features

    others = [n for n in dict.fromkeys(object_names) if n != det.options.object_name]
    # the detector keeps no text tower: one backbone load encodes every other name (features are disk-cached)
    feats = dict(zip(others, text_features(backbone, others, weights))) if others else {}
    feats[det.options.object_name] = det.text_features.detach().cpu()
    return torch.stack([feats[n].cpu() for n in object_names])


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOL_LABELS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOL_LABELS)}, not {protocol!r}")


def _provenance(det: AnomalyDetector, protocol: str, mode: str, samples: Sequence[Sample], root: Optional[Path],
                **extra) -> dict:
    return {"medad_version": __version__, "backbone": det.backbone,
            "backbone_sha256": det.metadata.get("backbone_sha256"), "data_fingerprint": fingerprint(samples, root),
            "protocol": protocol, "protocol_label": PROTOCOL_LABELS[protocol], "mode": mode, **extra}


def _save(result: TrainResult, out: Optional[str | Path]) -> TrainResult:
    if out is not None and world_info().main:
        result.checkpoint = Path(save_checkpoint(result.detector, out, extra=result.provenance) or out)
        logger.info("saved adapters to %s", result.checkpoint)
    return result


def train_zero_shot(datasets: Sequence[ADDataset], target: str, *, backbone: str = "ViT-L-14-336", weights=None,
                    config: Optional[TrainConfig] = None, protocol: str = "clean", out: Optional[str | Path] = None,
                    train_split: str = "test", detector: Optional[AnomalyDetector] = None) -> TrainResult:
    """Leave-one-dataset-out training for ``target``: train on every other dataset, return a detector for ``target``.

    Args:
        datasets: all datasets (the target included, it is left out of training).
        target: name of the held-out dataset.
        train_split: split of the source datasets used for training (``"test"`` as the reference).
        protocol: ``"clean"`` (select on the sources' ``valid`` splits) or ``"paper"`` (on the target's test split).
        out: checkpoint path (written by rank 0).
        detector: start from this detector instead of ``load_detector(backbone, weights)`` (adapters are reset).
    """
    import medad

    _check_protocol(protocol)
    config = config or TrainConfig()
    by_name = {d.name: d for d in datasets}
    if target not in by_name:
        raise ValueError(f"target dataset {target!r} is not among the datasets given: {sorted(by_name)}")
    sources = [d for d in datasets if d.name != target]
    if not sources:
        raise ValueError(f"zero-shot training for {target!r} needs at least one other dataset to train on "
                         "(leave-one-dataset-out); give more datasets with --data.")
    tgt = by_name[target]
    det = detector or medad.load_detector(backbone=backbone, weights=weights, object_name=tgt.object_name,
                                          device=config.device)
    reset_adapters(det, config.seed)
    names = list(dict.fromkeys(d.object_name for d in sources))
    texts = text_table(det, names + [tgt.object_name], det.backbone, weights)
    train_parts, selectors, used = [], [], []
    for d in sources:
        samples = d.split(train_split)
        used += samples
        train_parts.append(features_from_samples(det, samples, d.has_masks, names.index(d.object_name), config,
                                                 desc=f"caching {d.name}/{train_split}"))
        if protocol == "clean" and d.splits.get("valid"):
            feats = features_from_samples(det, d.split("valid"), d.has_masks, names.index(d.object_name), config,
                                          desc=f"caching {d.name}/valid")
            selectors.append(Selector(feats, texts, f"{d.name}/valid"))
    if protocol == "paper":
        feats = features_from_samples(det, tgt.split("test"), tgt.has_masks, len(names), config,
                                      desc=f"caching {tgt.name}/test")
        selectors.append(Selector(feats, texts, f"{tgt.name}/test"))
    if not any(s.usable for s in selectors):
        logger.warning("no validation set with normal and abnormal images: keeping the last epoch")
    history, best_epoch = fit_adapters(det, FeatureSet.cat(train_parts), texts, config, config.lr or 1e-4, selectors)
    if protocol == "clean":
        from .evaluate import fit_normalizers

        calib = [s for d in sources for s in d.splits.get("valid", [])]
        if calib:
            fit_normalizers(det, calib, batch_size=config.encode_batch_size, num_workers=config.num_workers)
    prov = _provenance(det, protocol, "zero-shot", used, None, target=target, sources=[d.name for d in sources],
                       train_split=train_split, epochs=config.epochs, best_epoch=best_epoch,
                       lr=config.lr or 1e-4, batch_size=config.batch_size, seed=config.seed,
                       selection=[s.name for s in selectors if s.usable] or "last epoch")
    return _save(TrainResult(det, history, best_epoch, prov), out)


def train_few_shot(dataset: ADDataset, k: int, *, backbone: str = "ViT-L-14-336", weights=None,
                   config: Optional[TrainConfig] = None, protocol: str = "clean", normal_only: bool = False,
                   support_seed: int = 0, support: Optional[Sequence[Sample]] = None, out: Optional[str | Path] = None,
                   detector: Optional[AnomalyDetector] = None) -> TrainResult:
    """k-shot training on ``dataset`` (support from its ``valid`` split), then the memory bank.

    Args:
        k: support images per class.
        normal_only: k normal images only: no training, memory bank only (adapters as loaded: fresh, or the
            ``detector`` you pass, e.g. one with zero-shot adapters).
        support: explicit support samples (e.g. the reference's ``fewshot_seed`` lists); default: random, seeded.
        protocol: ``"clean"`` selects on the non-support ``valid`` images and fits normalizers on them;
            ``"paper"`` selects on the test split and uses the reference's image score (max of the fused map) for
            datasets with masks.
    """
    import medad

    _check_protocol(protocol)
    config = config or TrainConfig()
    pool = dataset.split("valid")
    if support is None:
        support, rest = sample_support(pool, k, support_seed, abnormal=not normal_only,
                                       require_masks=dataset.has_masks)
    else:
        chosen = set(support)
        rest = [s for s in pool if s not in chosen]
    det = detector or medad.load_detector(backbone=backbone, weights=weights, object_name=dataset.object_name,
                                          device=config.device)
    images, masks, labels = load_batch(support, det.image_size)
    aug_images, aug_masks = augment_support(images, masks)
    aug_labels = labels.repeat(11)
    history, best_epoch, selectors = [], None, []
    lr = config.lr or 1e-3
    if not normal_only:
        reset_adapters(det, config.seed)
        texts = det.text_features.detach().cpu()[None]
        train = features_from_tensors(det, aug_images, aug_labels, aug_masks if dataset.has_masks else None,
                                      device=config.device, batch_size=config.encode_batch_size, amp=config.amp)
        sel_samples = rest if protocol == "clean" else dataset.split("test")
        if sel_samples:
            feats = features_from_samples(det, sel_samples, dataset.has_masks, 0, config,
                                          desc=f"caching {dataset.name} selection set")
            selectors.append(Selector(feats, texts, f"{dataset.name}/{'valid' if protocol == 'clean' else 'test'}"))
        history, best_epoch = fit_adapters(det, train, texts, config, lr, selectors)
    det.fit_memory_bank(aug_images[aug_labels == 0], batch_size=config.encode_batch_size)
    if protocol == "paper" and dataset.has_masks:
        det.options.image_score_rule = "map_max"
    if protocol == "clean" and rest:
        from .evaluate import fit_normalizers

        fit_normalizers(det, rest, batch_size=config.encode_batch_size, num_workers=config.num_workers)
    mode = "normal-only few-shot" if normal_only else "few-shot"
    prov = _provenance(det, protocol, mode, support, dataset.root, target=dataset.name, k=k,
                       n_support=len(support), epochs=0 if normal_only else config.epochs,
                       best_epoch=best_epoch, lr=None if normal_only else lr, batch_size=config.batch_size,
                       seed=config.seed, support_seed=support_seed,
                       selection=[s.name for s in selectors if s.usable] or "last epoch")
    return _save(TrainResult(det, history, best_epoch, prov), out)
