"""The README quick-start, ``medad label --studies sample_data/mr_flair_phantom --adapters demo``, run from the
repository as written: studies listed without their masks, and the repository left as it was (``git status``
clean under ``sample_data/`` and ``apps/``, nothing created, changed or removed there) after an inference, a saved
label and a study marked normal."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import requests
from monailabel.client import MONAILabelClient

from labelkit import REPO, medad_label_server, tree_snapshot

STUDIES = REPO / "sample_data" / "mr_flair_phantom"
WATCHED = ("sample_data", "apps")


def _git_status() -> str:
    r = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *WATCHED],
                       cwd=REPO, capture_output=True, text=True, check=True)
    return r.stdout


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs the git checkout")
def test_readme_quickstart_leaves_the_repository_clean(tmp_path):
    status_before = _git_status()
    trees_before = {w: tree_snapshot(REPO / w) for w in WATCHED}
    # exactly the README's command (workspace: the default one under $MEDAD_HOME, a temporary folder in the tests)
    with medad_label_server(STUDIES.relative_to(REPO), None, {}, tmp_path / "run",
                            extra_args=("--adapters", "demo"), cwd=REPO) as url:
        c = MONAILabelClient(url, tmpdir=str(tmp_path))
        objects = c.datastore()["objects"]
        assert sorted(objects) == ["image"]  # lesion_mask.nii.gz is recognised as its mask, not listed
        assert objects["image"]["image"]["info"]["reference_mask"] == "lesion_mask.nii.gz"
        label, res = c.infer("anomaly", "image", {"result_extension": ".nrrd", "result_dtype": "uint8"})
        assert res["outputs"]["anomaly_map"]["saved"] is True
        c.save_label("image", label, tag="final")
        assert requests.post(f"{url}/medad/mark_normal", params={"image": "image"}, timeout=60).status_code == 200
    assert _git_status() == status_before
    assert {w: tree_snapshot(REPO / w) for w in WATCHED} == trees_before
