"""Evaluation of a detector on a dataset split: image AUROC/AP/F1-max, pixel AUROC/AP/F1-max and AUPRO.

Normalization (only matters where two branches are fused, i.e. with a few-shot memory bank, and for thresholds):

* ``"fitted"`` (default): the detector's stored normalizers (fitted on support/validation data at training time),
  so every image is scored on its own, as in deployment.
* ``"transductive"``: the reference's protocol: min/max of every branch over the evaluated split itself. This costs
  a second pass over the split (nothing is kept in memory); the detector's own normalizers are restored afterwards.

Images stream through ``det.predict`` in batches; pixel metrics are accumulated on the fly
(:class:`~medad.evaluation.metrics.PixelMetrics`), so memory does not grow with the number of pixels.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medad.datasets import ADDataset, ImageMaskDataset, Sample
from medad.model.detector import AnomalyDetector

from .metrics import PixelMetrics, auroc, image_metrics

__all__ = ["evaluate", "evaluate_samples", "fit_normalizers", "iter_predictions"]

logger = logging.getLogger(__name__)


def iter_predictions(det: AnomalyDetector, samples: Sequence[Sample], has_masks: bool = False, batch_size: int = 16,
                     num_workers: int = 0, progress: bool = False, desc: str = "scoring") -> Iterator[tuple]:
    """Yield ``(DetectionResult, masks [B,H,W], labels [B], has_mask [B] bool)`` batch by batch over ``samples``.

    ``has_mask`` is False for abnormal images without a mask (read with ``strict_masks=False``): they count at the
    image level only."""
    ds = ImageMaskDataset(samples, has_masks, size=det.image_size)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    for b in tqdm(loader, desc=desc, disable=not progress, leave=False):
        res = det.predict(b["image"])
        yield (res, b["mask"][:, 0].to(res.anomaly_maps.device), torch.as_tensor(b["label"]),
               torch.as_tensor(b["has_mask"], dtype=torch.bool))


@torch.no_grad()
def fit_normalizers(det: AnomalyDetector, samples: Sequence[Sample], batch_size: int = 16, num_workers: int = 0,
                    progress: bool = False) -> dict[str, tuple[float, float]]:
    """Fit ``det.normalizer`` (min/max per branch) on ``samples`` streaming (the same as ``det.fit_normalizers``
    without holding all images in memory). Returns the fitted ranges."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def see(branch: str, v: Optional[torch.Tensor]) -> None:
        if v is None:
            return
        lo[branch] = min(lo.get(branch, math.inf), float(v.min()))
        hi[branch] = max(hi.get(branch, -math.inf), float(v.max()))

    for res, _, _, _ in iter_predictions(det, samples, False, batch_size, num_workers, progress, "fitting normalizers"):
        see("pixel_text", res.level_maps.sum(1))
        see("image_text", res.level_scores.sum(1))
        see("pixel_bank", res.bank_maps)
        see("image_bank", res.bank_scores)
    for branch in lo:
        det.normalizer.fit(branch, torch.tensor([lo[branch], hi[branch]]))
    return {b: (lo[b], hi[b]) for b in lo}


@torch.no_grad()
def evaluate_samples(det: AnomalyDetector, samples: Sequence[Sample], has_masks: bool, *,
                     normalization: str = "fitted", image_score_rule: Optional[str] = None, batch_size: int = 16,
                     num_workers: int = 0, progress: bool = True, aupro: bool = True,
                     return_scores: bool = False) -> dict:
    """Metrics of ``det`` on ``samples`` (see :func:`evaluate`)."""
    if normalization not in ("fitted", "transductive"):
        raise ValueError(f"normalization must be 'fitted' or 'transductive', not {normalization!r}")
    if not samples:
        raise ValueError("no samples to evaluate")
    t0 = time.time()
    saved_norm = copy.deepcopy(det.normalizer.state_dict())
    saved_rule = det.options.image_score_rule
    if image_score_rule is not None:
        det.options.image_score_rule = image_score_rule
    try:
        if normalization == "transductive":
            fit_normalizers(det, samples, batch_size, num_workers, progress)
        scores, text_scores, labels = [], [], []
        pixel = PixelMetrics(aupro=aupro) if has_masks else None
        pixel_text = PixelMetrics(aupro=False) if has_masks else None
        for res, masks, lab, has in iter_predictions(det, samples, has_masks, batch_size, num_workers, progress,
                                                     "evaluating"):
            scores.append(res.image_scores.float().cpu())
            text_scores.append(res.level_scores.sum(1).float().cpu())
            labels.append(lab)
            if pixel is not None and bool(has.any()):
                keep = has.to(masks.device)
                pixel.update(res.anomaly_maps[keep], masks[keep])
                pixel_text.update(res.level_maps.sum(1)[keep], masks[keep])
        scores_t, labels_t = torch.cat(scores), torch.cat(labels)
        out = {"n_images": len(samples), "n_normal": int((labels_t == 0).sum()),
               "n_abnormal": int((labels_t == 1).sum()),
               "normalization": normalization, "image_score_rule": det.options.image_score_rule,
               "memory_bank": det.memory_bank is not None}
        out.update(image_metrics(scores_t, labels_t))
        out["image_auroc_text_branch"] = (auroc(torch.cat(text_scores), labels_t)
                                          if 0 < out["n_normal"] < len(samples) else math.nan)
        if pixel is not None and pixel.counts is not None:
            out.update(pixel.compute())
            out["pixel_auroc_text_branch"] = pixel_text.compute()["pixel_auroc"]
        out["time_s"] = time.time() - t0
        if return_scores:
            out["scores"] = scores_t.tolist()
            out["labels"] = labels_t.tolist()
        return out
    finally:
        det.normalizer.load_state_dict(saved_norm)
        det.options.image_score_rule = saved_rule


def evaluate(det: AnomalyDetector, dataset: ADDataset, split: str = "test", **kwargs) -> dict:
    """Evaluate ``det`` on ``dataset``'s ``split``.

    Keyword args: ``normalization`` (``"fitted"`` | ``"transductive"``), ``image_score_rule`` (None = the
    detector's, ``"det"`` or ``"map_max"``), ``batch_size``, ``num_workers``, ``progress``, ``aupro``,
    ``return_scores``.

    Returns:
        dict with ``dataset``, ``split``, counts, ``image_auroc``, ``image_ap``, ``image_f1_max`` and, for datasets
        with masks, ``pixel_auroc``, ``pixel_ap``, ``pixel_f1_max``, ``aupro`` (all in [0, 1]), plus the text-branch
        AUROCs (before fusion) and settings.
    """
    out = {"dataset": dataset.name, "split": split}
    out.update(evaluate_samples(det, dataset.split(split), dataset.has_masks, **kwargs))
    logger.info("%s/%s: image AUROC %.4f%s", dataset.name, split, out["image_auroc"],
                f", pixel AUROC {out['pixel_auroc']:.4f}" if "pixel_auroc" in out else "")
    return out
