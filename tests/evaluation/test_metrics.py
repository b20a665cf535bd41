"""Metrics vs scikit-learn on random data (exact image metrics, fp16-histogram pixel metrics, AUPRO)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from medad.evaluation.metrics import PixelMetrics, auroc, average_precision, f1_max, float16_key, image_metrics


def _sk_f1max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
    return f1.max()


@pytest.mark.parametrize("ties", [False, True])
def test_exact_image_metrics_match_sklearn(ties):
    g = torch.Generator().manual_seed(0)
    for n in (7, 100, 2000):
        y = (torch.rand(n, generator=g) < 0.3).long()
        y[0], y[1] = 0, 1
        s = torch.rand(n, generator=g) + 0.5 * y
        if ties:
            s = (s * 8).round() / 8  # many tied scores
        assert auroc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
        assert average_precision(s, y) == pytest.approx(average_precision_score(y.numpy(), s.numpy()), abs=1e-12)
        assert f1_max(s, y) == pytest.approx(_sk_f1max(y.numpy(), s.numpy()), abs=1e-12)
        m = image_metrics(s, y)
        assert m["image_auroc"] == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)


def test_one_class_is_nan_with_warning():
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(auroc(torch.rand(5), torch.zeros(5)))


def test_float16_key_is_monotone():
    x = torch.tensor([-70000.0, -3.0, -1e-3, -0.0, 0.0, 1e-6, 0.3, 0.30001, 1.0, 4.0, 1e9])
    k = float16_key(x)
    assert (k[1:] >= k[:-1]).all() and k.min() >= 0 and k.max() < 65536


def _sk_aupro(maps, masks, limit=0.3):
    """Straightforward AUPRO at every distinct threshold (MVTec AD definition) with numpy/scipy."""
    from scipy import ndimage

    regions = []
    for m, s in zip(masks, maps):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [s[lab == i] for i in range(1, n + 1)]
    neg = np.sort(maps[masks == 0])[::-1]
    thr = np.unique(maps)[::-1]
    fpr = np.array([np.mean(neg >= t) for t in thr])
    pro = np.array([np.mean([np.mean(r >= t) for r in regions]) for t in thr])
    fpr, pro = np.r_[0, fpr], np.r_[0, pro]
    keep = fpr <= limit
    x, y = fpr[keep], pro[keep]
    i = keep.sum()
    if i < len(fpr):
        y_lim = pro[i - 1] + (pro[i] - pro[i - 1]) * (limit - fpr[i - 1]) / (fpr[i] - fpr[i - 1])
        x, y = np.r_[x, limit], np.r_[y, y_lim]
    return np.trapz(y, x) / limit


def test_pixel_metrics_stream_match_sklearn():
    g = torch.Generator().manual_seed(1)
    b, h, w = 6, 40, 40
    masks = torch.zeros(b, h, w)
    masks[0, 5:15, 5:12] = 1
    masks[0, 25:30, 30:38] = 1  # two regions in one image
    masks[2, 10:30, 10:20] = 1
    masks[4, 0:3, 0:40] = 1
    maps = torch.rand(b, h, w, generator=g) * 0.7 + 0.4 * masks + 0.1 * torch.rand(b, h, w, generator=g)
    pm = PixelMetrics()
    for i in range(0, b, 4):  # two updates
        pm.update(maps[i:i + 4], masks[i:i + 4])
    out = pm.compute()
    y, s = masks.flatten().numpy(), maps.flatten().numpy()
    # the histogram is exact for fp16-rounded scores: compare with sklearn on the rounded scores exactly ...
    s16 = maps.half().float().flatten().numpy()
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(y, s16), abs=1e-9)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(y, s16), abs=1e-9)
    assert out["pixel_f1_max"] == pytest.approx(_sk_f1max(y, s16), abs=1e-9)
    # ... and close to the float32 scores
    assert out["pixel_auroc"] == pytest.approx(roc_auc_score(y, s), abs=2e-3)
    assert out["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=5e-3)
    ref = _sk_aupro(maps.numpy(), masks.numpy().astype(bool))
    assert 0.2 < ref < 0.95
    assert out["aupro"] == pytest.approx(ref, abs=1e-2)


def test_pixel_metrics_errors():
    pm = PixelMetrics()
    with pytest.raises(ValueError, match="before any update"):
        pm.compute()
    with pytest.raises(ValueError, match="differ in shape"):
        pm.update(torch.rand(2, 8, 8), torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="NaN"):
        pm.update(torch.full((1, 4, 4), float("nan")), torch.zeros(1, 4, 4))
