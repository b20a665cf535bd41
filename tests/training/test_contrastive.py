"""Contrastive pre-training of the demo backbone: captions of phantom slices, the soft CLIP loss, the training loop."""

from __future__ import annotations

import random

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from medad.model.backbone import build_clip, get_backbone_config
from medad.synthetic.captions import caption, lesion_regions, slice_findings
from medad.training.contrastive import CaptionedSlices, PretrainConfig, pretrain_clip, soft_clip_loss


def _slice_with_lesions():
    """A grey 'head' disk (0.5) with a bright lesion on the image's left (patient right), anterior, and a dark one
    on the image's right, posterior (radiological view)."""
    yy, xx = np.mgrid[:240, :240]
    img = np.where((yy - 120) ** 2 + (xx - 120) ** 2 < 100**2, 0.5, 0.0).astype(np.float32)
    bright = (yy - 70) ** 2 + (xx - 70) ** 2 < 6**2
    dark = (yy - 170) ** 2 + (xx - 170) ** 2 < 15**2
    img[bright], img[dark] = 0.8, 0.3
    return img, bright | dark


def test_findings_read_kind_size_and_place_in_radiological_view():
    img, mask = _slice_with_lesions()
    assert slice_findings(img, mask, "CT") == (("hyperdense", "small", "right", "anterior"),
                                               ("hypodense", "large", "left", "posterior"))
    assert [f for _, f in lesion_regions(img, mask, "MR")][0][0] == "hyperintense"
    assert slice_findings(img, np.zeros_like(mask), "CT") == ()
    tip = np.zeros_like(mask)
    tip[120, 120:125] = True  # 5 pixels: a lesion's tip is not a finding
    assert slice_findings(img, tip, "CT") == ()


def test_captions_say_the_findings_and_open_with_an_mvfa_state():
    img, mask = _slice_with_lesions()
    text = caption(slice_findings(img, mask, "CT"), "CT")
    assert text == ("a bad photo of a damaged brain. axial CT slice of the head with two lesions: a small hyperdense "
                    "lesion in the right anterior brain and a large hypodense lesion in the left posterior brain.")
    assert caption((), "MR") == "a bad photo of a brain. axial FLAIR MR slice of the brain, normal, no lesion."
    worded = {caption((), "MR", random.Random(k)) for k in range(20)}
    assert len(worded) > 5 and all(t.endswith("axial FLAIR MR slice of the brain, normal, no lesion.") for t in worded)


def test_soft_clip_loss_is_clip_loss_for_distinct_captions_and_spares_duplicates():
    g = torch.Generator().manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1), F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    clip_loss = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.T, torch.arange(6))) / 2
    assert torch.allclose(soft_clip_loss(img, txt, scale, torch.arange(6)), clip_loss)
    # slices 0 and 1 have captions that mean the same: which of the two captions each one matches does not matter
    # to the soft loss, while CLIP's one-positive loss punishes the swap
    emb = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [1.0, -0.2, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    swapped = emb[[1, 0, 2]]
    groups = torch.tensor([0, 0, 1])
    assert soft_clip_loss(emb, swapped, scale, groups).item() == pytest.approx(
        soft_clip_loss(emb, emb, scale, groups).item(), abs=1e-6)
    distinct = torch.arange(3)
    assert soft_clip_loss(emb, swapped, scale, distinct).item() > soft_clip_loss(emb, emb, scale, distinct).item() + 0.5


def test_pretraining_learns_the_patches_of_lesions():
    """A few steps on 8 toy slices lower the region-text loss; the trained weights are finite and change."""
    torch.manual_seed(0)
    img, mask = _slice_with_lesions()
    patch = F.avg_pool2d(torch.as_tensor(mask[None, None, :238, :238], dtype=torch.float32), 14)
    concept = torch.where(patch.flatten() >= 0.5, 1, 0)
    images = torch.stack([torch.as_tensor(img)[None], torch.as_tensor(np.where(mask, 0.5, img))[None]] * 4).half()
    data = CaptionedSlices(images=images, groups=torch.tensor([0, 1] * 4),
                           caption=lambda i, r: ["a damaged brain.", "a flawless brain."][i % 2],
                           patch_concept=torch.stack([concept, torch.zeros_like(concept)] * 4),
                           concepts=["normal brain tissue.", "a lesion."], normal_concepts=[0])
    clip = build_clip(get_backbone_config("tiny"))
    before = clip.visual.conv1.weight.clone()
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
    hist = pretrain_clip(clip, data, tok, PretrainConfig(epochs=6, batch_size=8, lr=3e-3, region_levels=(2,)))
    assert len(hist) == 6 and hist[-1]["region_text"] < 0.75 * hist[0]["region_text"]
    assert not torch.equal(before, clip.visual.conv1.weight) and not clip.training
    assert all(torch.isfinite(p).all() for p in clip.parameters())
