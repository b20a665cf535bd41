"""The bundle README's commands, pasted as they are, in a copy of the working tree (a "fresh clone")."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import BUNDLE, REPO, demo_available

README = BUNDLE / "docs" / "README.md"
_BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*)?```bash\n(.*?)```", re.S)


def readme_commands() -> list[str]:
    """Commands of every ```bash block not marked ``<!-- readme-test: skip (...) -->``, in order."""
    cmds = []
    for skip, body in _BLOCK.findall(README.read_text()):
        if not skip:
            cmds += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return cmds


def test_readme_blocks_are_single_line_repo_root_commands():
    cmds = readme_commands()
    assert len(cmds) >= 10
    for c in cmds:
        assert c.startswith(".venv/bin/python -m monai.bundle "), c  # run from the repository root with the venv
        assert "bundles/mri_ct_slice_anomaly_mvfa/" in c


def _fresh_clone(dst: Path) -> Path:
    """Tracked + untracked-not-ignored files of the working tree (what a clone of the committed work holds)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file() and not f.startswith(("bundles/mri_ct_slice_anomaly_mvfa/eval", "out/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    (dst / ".venv").symlink_to(REPO / ".venv")
    return dst


@pytest.mark.skipif(not demo_available(), reason="the embedded demo model (medad/assets) is not installed yet")
def test_readme_commands_in_fresh_clone(tmp_path):
    clone = _fresh_clone(tmp_path / "clone")
    bundle = clone / "bundles" / "mri_ct_slice_anomaly_mvfa"
    assert not (bundle / "models" / "model.pt").exists() and not (bundle / "eval").exists()
    script = "set -e\n" + "\n".join(f"echo {shlex.quote('>>> ' + c)}\n{c}" for c in readme_commands())
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # default inference: both sample volumes, demo model
    with open(bundle / "eval" / "scores.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"ct_head_phantom_dicom", "mr_flair_phantom_image"}
    # DICOM outputs for the CT series
    assert {p.name for p in (clone / "out" / "bundle_ct").iterdir()} >= {"dicom_anomaly.nii.gz", "dicom_pm.dcm",
                                                                          "dicom_seg.dcm", "scores.csv"}
    assert "metadata is verified with no error" in proc.stdout
    assert "data shape of network is verified with no error" in proc.stdout
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "models" / "model.ts").is_file()
    # training demo: synthetic data, 1-epoch 2-shot model, its metrics, and inference with it
    assert (bundle / "demo_data" / "Brain_AD" / "valid" / "Ungood" / "anomaly_mask").is_dir()
    train_out = clone / "out" / "bundle_train"
    metrics = json.loads((train_out / "metrics.json").read_text())
    assert metrics["split"] == "test" and 0.0 <= metrics["pixel_auroc"] <= 1.0
    with open(train_out / "eval" / "scores.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2
