"""Shared helpers for the benchmark scripts: machine description, peak RSS, BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d}")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], BENCHMARKS_MD.parent)] + sys.argv[1:])


def update_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md with ``body``."""
    text = path.read_text() if path.exists() else "# medad benchmarks\n\nEvery figure comes from a script in `benchmarks/`; rerun it to refresh its section.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)


def git_rev() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=BENCHMARKS_MD.parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def reference_style_tokens(det, image):
    """MVFA-AD's forward for one prepared image ``[1, 3, S, S]``: attention weights materialized
    (``need_weights=True``), every adapter output computed (dead last-level ``fc2`` too) and the unused pooled
    projection. Returns per-level ``(seg_tokens, det_tokens)`` lists of ``[1, N, D]``; gradients follow the caller's
    autograd mode."""
    model = det.model
    v = model.visual
    x = model._embed(image)
    seg, dets = [], []
    for b, block in enumerate(v.transformer.resblocks):
        y = block.ln_1(x)
        attn_out, _weights = block.attn(y, y, y, need_weights=True)
        x = x + block.ls_1(attn_out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if b + 1 in model.levels:
            k = model.levels.index(b + 1)
            seg_h, seg_out = model.adapters.seg_adapters[k](x)
            det_h, det_out = model.adapters.det_adapters[k](x)
            x = 0.8 * x + 0.1 * seg_out + 0.1 * det_out
            seg.append(seg_h)
            dets.append(det_h)
    _pooled = v.ln_post(x[:, 0]) @ v.proj  # computed and unused, as in the reference
    return seg, dets
