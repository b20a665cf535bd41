"""``medad score`` killed with SIGKILL mid-run and rerun, and ``torchrun`` with 2 CPU ranks: both must give exactly
the outputs of one uninterrupted single-process run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from score_export import make_messy_export

from medad.batch import score

MODEL_ARGS = ["--adapters", "none", "--backbone", "tiny", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_messy_export(tmp_path_factory.mktemp("pacs"))


@pytest.fixture(scope="module")
def reference(export, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    s = score([export], out, adapters=None, backbone="tiny", batch_size=4, workers=0, progress=False)
    assert s.n_scored == 5
    return out


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _records(out: Path) -> dict[str, dict]:
    recs = {}
    for p in sorted((out / "series").glob("*/record.json")):
        r = json.loads(p.read_text())
        r.pop("seconds")
        recs[p.parent.name] = r
    return recs


def assert_same_outputs(a: Path, b: Path, tables_only: bool = False) -> None:
    for name in ("results.csv", "manifest.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    if tables_only:
        return
    assert _records(a) == _records(b)
    files_a = sorted(p.relative_to(a).as_posix() for p in (a / "series").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in (b / "series").rglob("*") if p.is_file())
    assert files_a == files_b  # nothing lost, nothing duplicated, no temporaries
    for rel in files_a:
        if rel.endswith(".nii.gz"):
            np.testing.assert_array_equal(np.asarray(nib.load(a / rel).dataobj), np.asarray(nib.load(b / rel).dataobj))
        elif rel.endswith(".png"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_kill_9_mid_run_then_rerun_equals_uninterrupted(export, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medad", "score", str(export), "--out", str(out), "--workers", "1", *MODEL_ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "series").glob("*/record.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "series").glob("*/record.json")))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 1 <= done < 7, f"the kill came too late ({done} series done)"
    assert not (out / "results.csv").exists()
    kept = sum(json.loads(p.read_text())["status"] != "failed" for p in (out / "series").glob("*/record.json"))

    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-3000:]  # 1: the corrupt series and the truncated file
    assert f"5 scored ({kept} from an earlier run)" in res.stdout  # failed series are retried
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_reused"] == kept and summary["n_scored"] == 5 and summary["n_failed"] == 2
    assert_same_outputs(reference, out)


def test_torchrun_two_cpu_ranks_equal_one_process(export, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "medad", "score", str(export), "--out", str(out), "--workers", "0", "--device", "cpu", *MODEL_ARGS]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert "rank 1/2" in res.stderr and "rank 0/2" in res.stderr, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["n_scored"], summary["n_failed"], summary["n_reused"]) == (5, 2, 0)
    assert_same_outputs(reference, out)
