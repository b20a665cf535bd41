"""Cached frozen features: the backbone is frozen and nothing before the first adapter level changes during training, so
the hidden states after that block (block 6 of ViT-L) are computed **once**, under ``no_grad``, and every epoch only
runs the adapters and the later blocks (:meth:`MVFAModel.forward_levels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medad.datasets import ImageMaskDataset, Sample
from medad.model.detector import AnomalyDetector

__all__ = ["FeatureSet", "autocast", "encode_features", "features_from_tensors", "features_from_samples"]


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp`` (disabled on CPU)."""
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
        with autocast(device, amp):
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


def features_from_samples(det: AnomalyDetector, samples: Sequence[Sample], has_masks: bool, text_index: int, *,
                          device: str | torch.device = "cpu", amp: bool = True, batch_size: int = 32,
                          num_workers: int = 0, progress: bool = False,
                          desc: str = "caching features") -> FeatureSet:
    """:class:`FeatureSet` of image files (loaded with :class:`ImageMaskDataset`, resized to the working size)."""
    ds = ImageMaskDataset(samples, has_masks, size=det.image_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    return encode_features(det, loader, text_index, has_masks, torch.device(device), amp,
                           total=len(loader), progress=progress, desc=desc)
