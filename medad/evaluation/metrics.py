"""Anomaly-detection metrics in torch: image AUROC/AP/F1-max (exact) and streaming pixel AUROC/AP/F1-max/AUPRO.

Image level (a few thousand scores): exact sort-based implementations that match scikit-learn's
``roc_auc_score`` / ``average_precision_score`` / ``precision_recall_curve`` including ties.

Pixel level (~1e8 pixels for BraTS-sized test sets): nothing is materialized. :class:`PixelMetrics` keeps one
histogram over the 65,536 float16 values of the score (an order-preserving integer key of its float16 bit pattern),
so every metric is *exact for the scores rounded to float16* (relative precision 2^-11, range-free: it works for
normalized [0,1] maps as well as raw level sums), updated batch by batch on the device of the maps with one
``bincount``. AUPRO keeps, per connected ground-truth region (8-connectivity, as MVTec AD), a coarser 2,048-bin
histogram (the top 11 bits of the same key) and integrates the mean per-region overlap over the false-positive rate
up to ``fpr_limit`` (0.3), normalized by ``fpr_limit``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

__all__ = ["auroc", "average_precision", "f1_max", "curve_from_sorted", "PixelMetrics", "image_metrics",
           "float16_key"]

_NBINS = 1 << 16
_PRO_SHIFT = 5  # AUPRO histograms: 2**(16-5) = 2048 bins
_PRO_BINS = _NBINS >> _PRO_SHIFT


def _check(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores).flatten()
    labels = torch.as_tensor(labels).flatten()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ in size")
    if scores.numel() and not torch.isfinite(scores.float()).all():
        raise ValueError("scores contain NaN or inf; check the model outputs before computing metrics")
    return scores.double(), labels.bool()


def _curve_counts(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative (tps, fps) at each distinct threshold, thresholds in decreasing order (sklearn convention)."""
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order].double()
    tps, fps = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # last index of every run of equal scores
    return tps[last], fps[last]


def curve_from_sorted(tps: torch.Tensor, fps: torch.Tensor) -> dict[str, float]:
    """AUROC, AP and F1-max from cumulative counts at decreasing thresholds (tps/fps non-decreasing, last = totals)."""
    tps, fps = tps.double(), fps.double()
    n_pos, n_neg = float(tps[-1]), float(fps[-1])
    out = {"auroc": math.nan, "ap": math.nan, "f1_max": math.nan}
    if n_pos == 0 or n_neg == 0:
        return out
    tpr = torch.cat([tps.new_zeros(1), tps / n_pos])
    fpr = torch.cat([fps.new_zeros(1), fps / n_neg])
    out["auroc"] = float(torch.trapezoid(tpr, fpr))
    predicted = tps + fps
    precision = torch.where(predicted > 0, tps / predicted.clamp(min=1), torch.ones_like(tps))
    recall = tps / n_pos
    d_recall = torch.diff(torch.cat([recall.new_zeros(1), recall]))
    out["ap"] = float((d_recall * precision).sum())
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(recall))
    out["f1_max"] = float(f1.max())
    return out


def _one_class_warning(what: str) -> None:
    warnings.warn(f"{what}: only one class present in the labels; the metric is undefined (nan)", stacklevel=3)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC (ties averaged like scikit-learn). ``scores`` and ``labels`` of any equal shape."""
    s, y = _check(scores, labels)
    if y.all() or (~y).all():
        _one_class_warning("auroc")
        return math.nan
    return curve_from_sorted(*_curve_counts(s, y))["auroc"]


def _precision_metric(scores: torch.Tensor, labels: torch.Tensor, key: str, name: str) -> float:
    s, y = _check(scores, labels)
    if not y.any():
        _one_class_warning(name)
        return math.nan
    tps, fps = _curve_counts(s, y)
    if fps[-1] == 0:
        return 1.0
    return curve_from_sorted(tps, fps)[key]


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact average precision (scikit-learn's step-wise definition, no interpolation)."""
    return _precision_metric(scores, labels, "ap", "average_precision")


def f1_max(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Maximum F1 over all thresholds."""
    return _precision_metric(scores, labels, "f1_max", "f1_max")


def image_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Image-level ``{"image_auroc", "image_ap", "image_f1_max"}`` (exact)."""
    s, y = _check(scores, labels)
    if y.all() or (~y).all():
        _one_class_warning("image metrics")
        return {"image_auroc": math.nan, "image_ap": math.nan, "image_f1_max": math.nan}
    m = curve_from_sorted(*_curve_counts(s, y))
    return {"image_auroc": m["auroc"], "image_ap": m["ap"], "image_f1_max": m["f1_max"]}


def float16_key(x: torch.Tensor) -> torch.Tensor:
    """Order-preserving map of ``x`` rounded to float16 onto integers ``0..65535`` (int64 tensor)."""
    h = x.float().clamp(-65504.0, 65504.0).to(torch.float16)
    u = h.view(torch.int16).to(torch.int64) & 0xFFFF
    return torch.where(u >= 0x8000, 0xFFFF - u, u | 0x8000)


def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of every mask ``[B,H,W]``, numbered consecutively from 1 over the batch."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    out = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        lab, n = ndimage.label(m, structure=structure)
        out[i] = np.where(lab > 0, lab + total, 0)
        total += n
    return out, total


class PixelMetrics:
    """Streaming pixel-level metrics over batches of maps and masks.

    Args:
        aupro: also keep the per-region histograms for AUPRO.
        fpr_limit: AUPRO integration limit on the false-positive rate.

    Example::

        pm = PixelMetrics()
        for maps, masks in batches:      # maps [B,H,W] float, masks [B,H,W] {0,1}
            pm.update(maps, masks)
        pm.compute()   # {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    """

    def __init__(self, aupro: bool = True, fpr_limit: float = 0.3):
        self.aupro, self.fpr_limit = aupro, fpr_limit
        self.counts: torch.Tensor | None = None  # [65536, 2] (negatives, positives)
        self.region_hists: list[torch.Tensor] = []

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """Add a batch: ``maps [B,H,W]`` (or [B,1,H,W]) anomaly scores, ``masks`` binary of the same size."""
        maps = maps.detach()
        masks = masks.detach().to(maps.device)
        if maps.ndim == 4:
            maps = maps[:, 0]
        if masks.ndim == 4:
            masks = masks[:, 0]
        if maps.shape != masks.shape:
            raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
        if not torch.isfinite(maps).all():
            raise ValueError("anomaly maps contain NaN or inf")
        key = float16_key(maps)
        target = masks > 0.5
        counts = torch.bincount((key * 2 + target.long()).flatten(), minlength=2 * _NBINS).view(_NBINS, 2)
        self.counts = counts if self.counts is None else self.counts + counts.to(self.counts.device)
        if self.aupro and bool(target.any()):
            regions, n = _label_regions(target.cpu().numpy())
            if n:
                reg = torch.from_numpy(regions).to(key.device)
                inside = reg > 0
                idx = (reg[inside] - 1) * _PRO_BINS + (key[inside] >> _PRO_SHIFT)
                self.region_hists.append(torch.bincount(idx, minlength=n * _PRO_BINS).view(n, _PRO_BINS).cpu())

    def compute(self) -> dict[str, float]:
        """``{"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}``; nan where undefined (no positive pixels)."""
        if self.counts is None:
            raise ValueError("PixelMetrics.compute() called before any update()")
        counts = self.counts.double().cpu()
        neg, pos = counts[:, 0].flip(0), counts[:, 1].flip(0)  # decreasing thresholds
        out = {"pixel_auroc": math.nan, "pixel_ap": math.nan, "pixel_f1_max": math.nan, "aupro": math.nan}
        if pos.sum() == 0 or neg.sum() == 0:
            _one_class_warning("pixel metrics")
            return out
        m = curve_from_sorted(torch.cumsum(pos, 0), torch.cumsum(neg, 0))
        out.update(pixel_auroc=m["auroc"], pixel_ap=m["ap"], pixel_f1_max=m["f1_max"])
        if self.aupro and self.region_hists:
            out["aupro"] = self._aupro(counts[:, 0])
        return out

    def _aupro(self, neg_counts: torch.Tensor) -> float:
        hists = torch.cat(self.region_hists).double()  # [R, bins]
        neg = neg_counts.view(_PRO_BINS, -1).sum(1)
        # thresholds at bin lower edges, decreasing: fraction of pixels with key >= edge
        fpr = torch.cumsum(neg.flip(0), 0) / neg.sum()
        pro = (torch.cumsum(hists.flip(1), 1) / hists.sum(1, keepdim=True)).mean(0)
        fpr = torch.cat([fpr.new_zeros(1), fpr])
        pro = torch.cat([pro.new_zeros(1), pro])
        limit = self.fpr_limit
        keep = fpr <= limit
        x, y = fpr[keep], pro[keep]
        i = int(keep.sum())
        if i < fpr.numel() and x[-1] < limit:  # interpolate the curve at the limit
            x0, x1, y0, y1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
            x = torch.cat([x, x.new_tensor([limit])])
            y = torch.cat([y, y_lim.reshape(1)])
        return float(torch.trapezoid(y, x) / limit)
