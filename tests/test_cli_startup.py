"""``medad --help`` and argument errors answer in under a second: the command line imports torch, MONAI and pydicom
only when a command runs (lazy ``medad`` package, commands that import their engine inside ``run``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "medad", *args], capture_output=True, text=True, env=ENV, timeout=60)
    return time.perf_counter() - t, res


@pytest.mark.parametrize("args, code, text", [
    (["--help"], 0, "score"),
    (["score", "--help"], 0, "--exclude"),
    (["score", "/nowhere"], 2, "the following arguments are required: --out"),
    (["score", "/nowhere", "--out", "x", "--axis", "oblique"], 2, "invalid choice: 'oblique'"),
])
def test_help_and_argument_errors_take_under_a_second(args, code, text):
    runs = [_timed(args) for _ in range(3)]  # the fastest of 3: a loaded test machine adds noise, not imports
    best, res = min(runs, key=lambda r: r[0])
    assert res.returncode == code and text in (res.stdout + res.stderr), res.stderr[-2000:]
    assert best < 1.0, f"medad {' '.join(args)} took {best:.2f} s"


def test_the_parser_imports_no_heavy_package():
    code = ("import sys, medad.cli; medad.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'monai', 'pydicom', 'numpy', 'open_clip') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]
