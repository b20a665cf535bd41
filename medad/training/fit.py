"""The adapter training loop on cached features (:mod:`medad.training.features`).

Speed design (spec section 8 lists what the reference does instead):

* Every epoch runs only the adapters and the blocks after the first adapter level, with gradients into the adapters
  only (the backbone is frozen; its prefix is cached once).
* Real batching (any batch size), samples of different datasets mixed in a batch with their own text features.
* bf16 autocast on CUDA; Adam ``betas=(0.5, 0.999)``; seeded initialisation and batch order.
* Multi-process data parallel through ``torchrun`` (:mod:`medad.training.distributed`).

Model selection: :class:`Selector` scores the adapters on held-out cached features after each evaluated epoch (image
AUROC + pixel AUROC of the text branch); :func:`fit_adapters` keeps the best epoch (the last one without selectors).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from medad.evaluation.metrics import PixelMetrics, auroc
from medad.model import scoring
from medad.model.detector import AnomalyDetector

from .distributed import DistInfo, all_reduce_gradients, broadcast_parameters, shard, world_info
from .features import FeatureSet, autocast
from .losses import MVFALoss

__all__ = ["TrainConfig", "Selector", "reset_adapters", "accumulate_gradients", "fit_adapters"]


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``lr=None`` means the protocol default (1e-4 zero-shot, 1e-3 few-shot)."""

    epochs: int = 50
    lr: Optional[float] = None
    batch_size: int = 16
    seed: int = 111
    eval_every: int = 1
    device: str = "cpu"
    precision: str = "auto"  # the frozen backbone's weights: "auto" (bf16 where native), "fp32", "bf16"
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    det_loss: str = "bce"
    num_workers: int = 0
    encode_batch_size: int = 32
    progress: bool = True
    lr_schedule: str = "constant"  # or "cosine" (per step, to 0 at the last step); the reference uses constant


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
            with autocast(device, amp):
                seg, dt = det.model.forward_levels(h)
            text = self.texts[tix].to(device)
            scores.append(scoring.patch_probs(dt.float(), text).mean(-1).sum(0).cpu())
            if with_masks and masks is not None:
                pm.update(scoring.level_maps(seg.float(), text, (f.size, f.size)).sum(0), masks[:, 0])
        out = {"image_auroc": auroc(torch.cat(scores), f.labels)}
        out["pixel_auroc"] = pm.compute()["pixel_auroc"] if with_masks else math.nan
        out["score"] = out["image_auroc"] + (0.0 if math.isnan(out["pixel_auroc"]) else out["pixel_auroc"])
        return out


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

    Each rank computes its slice (:func:`~medad.training.distributed.shard`) with the loss scaled by the slice's
    share of the global batch, then the gradients are summed over ranks: the result equals the single-process gradient.

    Returns:
        ``(local batch size, {"loss", "seg", "det"} local means)``.
    """
    info = world_info()
    local_idx = shard(global_idx, info.rank, info.world_size)
    losses = {"loss": 0.0, "seg": 0.0, "det": 0.0}
    if len(local_idx):
        h, labels, tix, masks, has = train.batch(local_idx, device)
        with autocast(device, amp):
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
