"""The bundle copied alone to a temporary folder and run from inside it, as a model-zoo user runs it after
``monai.bundle download``: every command of its README (``docs/README.md``, pasted as they are, the test
environment's ``python`` first on ``PATH``), which starts with the defaults: inference, a 1-epoch training and its
evaluation (``--backbone tiny``). Every file the runs write must be under ``output_dir`` (``./eval``), and no shipped
file may change."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BUNDLE
from .test_readme import readme_commands

pytestmark = pytest.mark.slow  # seven CLI runs (about 2 CPU-minutes)

DEFAULT_RUNS = [
    "python -m monai.bundle run --config_file configs/inference.json",
    "python -m monai.bundle run --config_file configs/train.json --backbone tiny --train#trainer#max_epochs 1",
    "python -m monai.bundle run --config_file \"['configs/train.json','configs/evaluate.json']\" --backbone tiny",
]


def _tree(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The README's commands run in order from a copy of the bundle (as committed: no eval/)."""
    bundle = tmp_path_factory.mktemp("zoo") / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "__pycache__"))
    before = _tree(bundle)
    cmds = readme_commands()
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    script = "set -e\n" + "\n".join(f"echo {shlex.quote('>>> ' + c)}\n{c}" for c in cmds)
    proc = subprocess.run(["bash", "-c", script], cwd=bundle, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return bundle, before, _tree(bundle), proc.stdout + proc.stderr, cmds


def test_the_readme_starts_with_the_default_runs(runs):
    *_, cmds = runs
    assert cmds[:len(DEFAULT_RUNS)] == DEFAULT_RUNS


def test_outputs_only_under_output_dir(runs):
    bundle, before, after, _, _ = runs
    assert not set(before) - set(after), "a run deleted a shipped file"
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert changed and all(p.startswith("eval/") for p in changed), [p for p in changed if not p.startswith("eval/")]
    assert after["models/model.pt"] == before["models/model.pt"]  # training never overwrites the shipped model


def test_default_inference_scores_the_demo_volumes(runs):
    bundle, *_ = runs
    assert (bundle / "eval" / "demo_data" / "volumes" / "ct_head_phantom" / "dicom").is_dir()
    with open(bundle / "eval" / "scores.csv", newline="") as fh:
        rows = {r["output_dir"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"ct_head_phantom_dicom", "mr_flair_phantom_image"}
    for name, r in rows.items():
        assert r["status"] == "ok" and (bundle / "eval" / name / f"{name}_anomaly.nii.gz").is_file()


def test_training_evaluation_and_inference_with_the_trained_model(runs):
    bundle, *_ = runs
    assert (bundle / "eval" / "demo_data" / "Brain_AD" / "valid" / "Ungood" / "anomaly_mask").is_dir()
    hist = json.loads((bundle / "eval" / "train_history.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == [1]  # train#trainer#max_epochs reached the trainer
    metrics = json.loads((bundle / "eval" / "metrics.json").read_text())
    assert (metrics["split"], metrics["model"], metrics["backbone"]) == ("test", "./eval/model.pt", "tiny")
    assert metrics["n_normal"] > 0 and metrics["n_abnormal"] > 0
    with open(bundle / "eval" / "trained" / "scores.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_zoo_checks_and_trace_export(runs):
    bundle, _, _, out, _ = runs
    assert "metadata is verified with no error" in out
    assert "data shape of network is verified with no error" in out
    assert (bundle / "eval" / "model.ts").is_file()
