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


def cpu_flags_line() -> str:
    """The CPU features that decide CPU speed and ``precision="auto"``, as "name yes/no" pairs."""
    from medad.model.precision import cpu_flags

    flags = cpu_flags()
    names = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    return "CPU flags: " + ", ".join(f"{n} {'yes' if n in flags else 'no'}" for n in names)


def load_average() -> float:
    """1-minute load average (nan where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def gemm_gflops(dtype, m: int = 2320, k: int = 1024, n: int = 4096, seconds: float = 1.0, device: str = "cpu") -> float:
    """Best-of-runs GFLOP/s of one ``[m,k] @ [k,n]`` matrix product (default: a ViT-L MLP GEMM for 8 slices)."""
    import time

    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        t = time.perf_counter()
        torch.mm(a, b)
        sync()
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2.0 * m * k * n / best / 1e9


def vit_gflop_per_slice(det) -> float:
    """Multiply-adds x2 of one slice through the backbone + adapters, counted from the model's shapes (patch conv,
    qkv/out projections, attention products, MLP, adapter linears). ``torch.utils.flop_counter`` misses the fused
    ``nn.MultiheadAttention`` fast path, hence the explicit count."""
    import torch

    v = det.model.visual
    width, patch = v.conv1.out_channels, v.conv1.kernel_size[0]
    grid = v.grid_size[0] * v.grid_size[1]
    tokens = grid + 1
    flops = 2.0 * grid * width * 3 * patch * patch
    for block in v.transformer.resblocks:
        hidden = block.mlp.c_fc.out_features
        flops += 2.0 * tokens * width * 4 * width + 4.0 * tokens * tokens * width + 4.0 * tokens * width * hidden
    for m in det.model.adapters.modules():
        if isinstance(m, torch.nn.Linear):
            flops += 2.0 * tokens * m.in_features * m.out_features
    return flops / 1e9


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
