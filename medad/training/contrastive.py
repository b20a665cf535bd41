"""Contrastive image-text pre-training of a small CLIP: how the demo backbone learns to see before MVFA adapts it.

Two losses, both CLIP's symmetric InfoNCE between normalized image-side and text-side embeddings:

* **image-caption** (CLIP, Radford et al. 2021): the pooled image embedding of a slice against its caption
  (:mod:`medad.synthetic.captions`). Generated captions repeat (many slices are "normal"), so the targets are soft:
  every caption with the same meaning (``group``) is a positive, not a false negative as in open_clip's ``ClipLoss``,
  which assumes one positive per row.
* **region-text** (RegionCLIP, Zhong et al. 2022, at its finest grain): every patch token, projected like the class
  token, is a region matched against the embeddings of a fixed list of region concepts ("a hyperdense lesion in the
  brain on a CT.", "normal brain tissue on a CT of the head.", ...). This teaches the patch tokens, which MVFA's
  adapters read, what a lesion looks like.

Shapes: images ``[N, 1, S, S]`` in [0, 1] (grey, repeated to 3 channels and CLIP-normalized here); region weights
``[N, P]`` concept per patch of the vision tower's ``P = g*g`` grid.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

__all__ = ["PretrainConfig", "CaptionedSlices", "soft_clip_loss", "region_text_loss", "pretrain_clip"]


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain_clip` (AdamW, linear warm-up then cosine decay, per step)."""

    epochs: int = 12
    batch_size: int = 96
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.1  # fraction of the steps
    region_weight: float = 1.0
    region_levels: tuple[int, ...] = ()  # 1-based blocks whose tokens are also aligned (empty = the last only)
    seed: int = 0


@dataclass
class CaptionedSlices:
    """Training material: slices, what each caption means, and the regions with their concept.

    Attributes:
        images: ``[N, 1, S, S]`` float16 grey slices in [0, 1] (the volume runner's model input, one channel).
        groups: ``[N]`` int64, the meaning of each slice's caption (equal = same findings, same modality).
        caption: ``caption(i, rng) -> str``: a caption for slice ``i`` (the wording may vary with ``rng``).
        patch_concept: ``[N, P]`` int64: what each patch shows, an index into ``concepts``, or -1 (not trained: a
            patch partly in a lesion, or background).
        concepts: the concept texts (those at ``normal_concepts`` are normal tissue, the others lesions).
        normal_concepts: the indices of the normal-tissue concepts.
    """

    images: torch.Tensor
    groups: torch.Tensor
    caption: Callable[[int, random.Random], str]
    patch_concept: torch.Tensor
    concepts: Sequence[str] = field(default_factory=list)
    normal_concepts: Sequence[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def soft_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                   groups: torch.Tensor) -> torch.Tensor:
    """Symmetric CLIP loss with every same-``groups`` pair as a positive.

    Args:
        image, text: ``[B, D]`` unit embeddings (row ``i`` of both belongs to sample ``i``).
        logit_scale: scalar (already exponentiated).
        groups: ``[B]`` meaning of each caption.
    """
    logits = logit_scale * image @ text.T
    same = (groups[:, None] == groups[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


def region_text_loss(region: torch.Tensor, concepts: torch.Tensor, logit_scale: torch.Tensor,
                     labels: torch.Tensor, is_normal: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[R, D]`` unit region embeddings against ``[K, D]`` unit concept embeddings, balanced: the
    mean over lesion regions and the mean over normal regions (``is_normal [R]`` bool) count the same (lesions cover a
    few percent of a slice)."""
    ce = F.cross_entropy(logit_scale * region @ concepts.T, labels, reduction="none")
    parts = [ce[sel].mean() for sel in (is_normal, ~is_normal) if sel.any()]
    return sum(parts) / len(parts)


def pretrain_clip(clip, data: CaptionedSlices, tokenizer, config: PretrainConfig,
                  on_epoch: Optional[Callable[[int, dict], None]] = None) -> list[dict]:
    """Train all of ``clip`` (an open_clip ``CLIP``) on ``data`` in place; returns the per-epoch mean losses.

    Each epoch visits every slice once in a seeded random order. The loss is the image-caption loss plus
    ``region_weight`` times the region-text loss.
    """
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    wording = random.Random(config.seed)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    steps_per_epoch = len(data) // config.batch_size
    total = max(1, steps_per_epoch * config.epochs)
    warm = max(1, int(config.warmup * total))
    opt = torch.optim.AdamW(clip.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1))))
    concept_tokens = tokenizer(list(data.concepts))
    normal = torch.zeros(len(data.concepts), dtype=torch.bool)
    normal[list(data.normal_concepts)] = True
    visual = clip.visual
    history = []
    for epoch in range(1, config.epochs + 1):
        clip.train()
        order = torch.randperm(len(data), generator=gen)
        sums = {"loss": 0.0, "image_text": 0.0, "region_text": 0.0}
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = (data.images[batch].float().expand(-1, 3, -1, -1) - mean) / std
            levels: list[torch.Tensor] = []
            hooks = [visual.transformer.resblocks[k - 1].register_forward_hook(lambda m, i, o: levels.append(o))
                     for k in config.region_levels]
            visual.output_tokens = True
            try:
                pooled, tokens = visual(x)  # [B, D], [B, P, C] (after ln_post, before the projection)
            finally:
                visual.output_tokens = False
                for h in hooks:
                    h.remove()
            text = clip.encode_text(tokenizer([data.caption(int(i), wording) for i in batch]))
            scale = clip.logit_scale.exp().clamp(max=100.0)
            it = soft_clip_loss(F.normalize(pooled, dim=-1), F.normalize(text, dim=-1), scale, data.groups[batch])
            labels = data.patch_concept[batch]  # [B, P]
            keep = labels >= 0
            concepts = F.normalize(clip.encode_text(concept_tokens), dim=-1)
            # every patch token is a region; intermediate levels go through the same ln_post + projection
            grids = [tokens] + [visual.ln_post(h[:, 1:]) for h in levels if h.shape[1] == tokens.shape[1] + 1]
            rt = sum(region_text_loss(F.normalize(g[keep] @ visual.proj, dim=-1), concepts, scale, labels[keep],
                                      normal[labels[keep]]) for g in grids) / len(grids)
            loss = it + config.region_weight * rt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in (("loss", loss), ("image_text", it), ("region_text", rt)):
                sums[k] += float(v.detach())
        record = {k: v / max(steps_per_epoch, 1) for k, v in sums.items()}
        history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    clip.eval()
    return history
