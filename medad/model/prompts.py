"""Text prompt ensemble of MVFA (spec section 3): 7 normal and 5 abnormal states x 35 templates."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["NORMAL_STATES", "ABNORMAL_STATES", "TEMPLATES", "PROMPT_SET", "prompt_sentences", "encode_prompt_ensemble"]

NORMAL_STATES = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect",
                 "{} without damage")
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a photo of one {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "a low resolution photo of a {}.", "a photo of a large {}.",
    "a blurry photo of a {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a photo of the small {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "a dark photo of a {}.", "a photo of a cool {}.", "a photo of a small {}.", "there is a {} in the scene.",
    "there is the {} in the scene.", "this is a {} in the scene.", "this is the {} in the scene.",
    "this is one {} in the scene.",
)
#: Name of this prompt set, stored in checkpoints.
PROMPT_SET = "mvfa-winclip-35x(7+5)"


def prompt_sentences(object_name: str) -> tuple[list[str], list[str]]:
    """All ``state x template`` sentences: (245 normal, 175 abnormal) for the default set."""
    normal = [t.format(s.format(object_name)) for s in NORMAL_STATES for t in TEMPLATES]
    abnormal = [t.format(s.format(object_name)) for s in ABNORMAL_STATES for t in TEMPLATES]
    return normal, abnormal


@torch.no_grad()
def encode_prompt_ensemble(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[Sequence[str]], torch.Tensor],
    object_name: str,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Encode the prompt ensemble for ``object_name``.

    Each class embedding is the re-normalized mean of the L2-normalized sentence embeddings.

    Returns:
        ``[D, 2]`` unit columns: column 0 normal, column 1 abnormal.
    """
    columns = []
    for sentences in prompt_sentences(object_name):
        emb = F.normalize(encode_text(tokenizer(sentences).to(device)).float(), dim=-1)
        columns.append(F.normalize(emb.mean(0), dim=0))
    return torch.stack(columns, dim=1)
