"""Generated captions for phantom slices: the text half of the image-text pairs that pre-train the demo backbone.

A caption says what a radiologist would see on the slice: the modality, whether it is normal, and each visible lesion
with its density/signal (hyperdense, hypodense, hyperintense), its size and where it lies in the image (radiological
view: image left = patient right). It opens with one sentence of the MVFA prompt ensemble (a normal or an abnormal
state of the object from :mod:`medad.model.prompts`), so that the pre-trained text tower gives that ensemble a
meaning::

    "a photo of the damaged brain. axial CT slice of the head with a small hyperdense lesion in the left anterior
     brain and a large hypodense lesion in the right posterior brain."

:func:`slice_findings` reads the findings from a preprocessed slice ``[3, H, W]`` in [0, 1] and its lesion mask
``[H, W]``; :func:`caption` turns findings into text. The findings tuple is also the *meaning* of a caption: two
slices with equal findings are positives for each other in the contrastive loss whatever the wording.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
from scipy import ndimage

from ..model.prompts import ABNORMAL_STATES, NORMAL_STATES, TEMPLATES

__all__ = ["Finding", "lesion_regions", "slice_findings", "caption"]

#: One lesion seen on a slice: (kind, size, side, front-back), e.g. ("hyperdense", "small", "left", "anterior").
Finding = tuple[str, str, str, str]


_MODALITY = {"CT": "axial CT slice of the head", "MR": "axial FLAIR MR slice of the brain"}
_COUNT = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}


def lesion_regions(image: np.ndarray, mask: np.ndarray, modality: str,
                   min_pixels: int = 12) -> list[tuple[np.ndarray, Finding]]:
    """The lesion cross-sections of one preprocessed slice with what a reader would say of each.

    Args:
        image: ``[C, H, W]`` or ``[H, W]`` slice in [0, 1] (the volume runner's model input).
        mask: ``[H, W]`` lesion mask (nonzero inside a lesion).
        modality: ``"CT"`` or ``"MR"``.
        min_pixels: cross-sections smaller than this are left out (a lesion's tip is barely visible).

    Returns:
        ``[(region [H, W] bool, finding), ...]``, one per lesion cross-section; empty for a normal slice.
    """
    img = np.asarray(image, dtype=np.float32)
    img = img.mean(0) if img.ndim == 3 else img
    labels, n = ndimage.label(np.asarray(mask) > 0)
    head = np.argwhere(img > 0.02)
    if n == 0 or len(head) == 0:
        return []
    (r0, c0), (r1, c1) = head.min(0), head.max(0)
    found = []
    for k in range(1, n + 1):
        comp = labels == k
        area = int(comp.sum())
        if area < min_pixels:
            continue
        ring = ndimage.binary_dilation(comp, iterations=4) & ~ndimage.binary_dilation(comp, iterations=1)
        brighter = float(img[comp].mean()) > float(img[ring].mean()) if ring.any() else True
        if modality == "CT":
            kind = "hyperdense" if brighter else "hypodense"
        else:
            kind = "hyperintense" if brighter else "hypointense"
        r, c = np.argwhere(comp).mean(0)
        x, y = (c - c0) / max(c1 - c0, 1), (r - r0) / max(r1 - r0, 1)
        side = "right" if x < 0.45 else "left" if x > 0.55 else "midline"  # radiological view: image left = right
        ap = "anterior" if y < 0.45 else "posterior" if y > 0.55 else "central"
        size = "small" if area < 180 else "large"
        found.append((comp, (kind, size, side, ap)))
    return found


def slice_findings(image: np.ndarray, mask: np.ndarray, modality: str, min_pixels: int = 12) -> tuple[Finding, ...]:
    """The findings of :func:`lesion_regions`, sorted (so two slices with the same findings compare equal)."""
    return tuple(sorted(f for _, f in lesion_regions(image, mask, modality, min_pixels)))


def caption(findings: Sequence[Finding], modality: str, rng: random.Random | None = None,
            object_name: str = "brain") -> str:
    """A caption for ``findings`` on a ``modality`` slice; ``rng`` picks the wording (None = the first of each list)."""
    pick = (lambda seq: seq[0]) if rng is None else rng.choice
    states = ABNORMAL_STATES if findings else NORMAL_STATES
    head = pick(TEMPLATES).format(pick(states).format(object_name))
    body = _MODALITY[modality]
    if not findings:
        return f"{head} {body}, normal, no lesion."
    parts = [f"a {size} {kind} lesion in the {side} {ap} {object_name}".replace("midline central", "central")
             for kind, size, side, ap in findings]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    n = _COUNT.get(len(parts), str(len(parts)))
    lead = "" if len(parts) == 1 else f"{n} lesions: "
    return f"{head} {body} with {lead}{listed}."
