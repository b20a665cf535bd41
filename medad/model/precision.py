"""Numeric precision of the frozen backbone: ``"fp32"``, ``"bf16"`` or ``"auto"``.

``"auto"`` picks bf16 only where the device computes it natively and fast:

* CUDA devices that report bf16 support (``torch.cuda.is_bf16_supported()``, Ampere and newer);
* CPUs with AMX-BF16 or AVX512-BF16 units (on AVX2-only CPUs bf16 GEMMs are emulated and measured 4x slower than
  fp32, see ``BENCHMARKS.md``);

and fp32 everywhere else (MPS, older GPUs, AVX2 CPUs). Pure torch; the CPU probe reads ``/proc/cpuinfo`` flags when
present and falls back to torch's own CPU capability string.

The environment variable ``MEDAD_PRECISION`` (``fp32`` or ``bf16``), when set, is what ``"auto"`` resolves to on every
device: a machine-wide override where the probe is wrong, and how the test suite keeps exact numbers on any CPU.
An explicit ``"fp32"``/``"bf16"`` argument always wins over it.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional

import torch

__all__ = ["ENV_VAR", "PRECISIONS", "capability", "cpu_flags", "native_bf16", "resolve_precision"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU flags (Linux ``/proc/cpuinfo`` names) that give native bf16 GEMMs.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
#: Environment variable that fixes what ``"auto"`` resolves to (``fp32`` or ``bf16``).
ENV_VAR = "MEDAD_PRECISION"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags that matter for precision (``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16``...).

    Linux: from ``/proc/cpuinfo``. Elsewhere: derived from ``torch.backends.cpu.get_cpu_capability()`` (which only
    tells ``AVX2``/``AVX512``, never bf16, so ``auto`` stays fp32 there).
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags:
        try:
            cap = torch.backends.cpu.get_cpu_capability().lower()
        except Exception:  # noqa: BLE001 - very old torch
            cap = ""
        if "avx512" in cap:
            flags.update({"avx2", "avx512f"})
        elif "avx2" in cap:
            flags.add("avx2")
    keep = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16")
    return frozenset(f for f in flags if f in keep)


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 natively (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return any(f in cpu_flags() for f in BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: Optional[str], device: torch.device | str = "cpu") -> str:
    """``"auto"``/None -> ``"bf16"`` or ``"fp32"`` for ``device`` (or ``$MEDAD_PRECISION`` when set);
    ``"fp32"``/``"bf16"`` are returned unchanged.

    Raises:
        ValueError: for any other value.
    """
    value = "auto" if precision is None else str(precision).lower()
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if value != "auto":
        return value
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected fp32 or bf16 (or unset for auto)")
        log.info("precision 'auto' -> %s on %s (%s is set)", forced, torch.device(device).type, ENV_VAR)
        return forced
    chosen = "bf16" if native_bf16(device) else "fp32"
    log.info("precision 'auto' -> %s on %s (%s)", chosen, torch.device(device).type, capability(device))
    return chosen


def capability(device: torch.device | str = "cpu") -> str:
    """What the ``auto`` decision for ``device`` rests on, in words (for logs, provenance and benchmarks)."""
    device = torch.device(device)
    if device.type == "cpu":
        return "CPU flags: " + (", ".join(sorted(cpu_flags())) or "none of " + ", ".join(BF16_CPU_FLAGS))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA not available"
        return f"torch.cuda.is_bf16_supported()={bool(torch.cuda.is_bf16_supported())}"
    return f"no native bf16 probe for {device.type}"
