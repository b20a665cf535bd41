"""The README's first command (``medad score sample_data``) with the embedded demo model: every file accounted for,
the lesion masks skipped as label maps, exit code 0, and the most anomalous slice of each volume holds a lesion."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medad.batch import score
from medad.factory import DEMO_ADAPTERS

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


@pytest.mark.skipif(not DEMO_ADAPTERS.is_file() or not SAMPLE.is_dir(), reason="demo model or sample_data missing")
def test_score_sample_data_with_the_demo_model(tmp_path):
    s = score([SAMPLE], tmp_path / "out", adapters="demo", workers=0, progress=False)
    assert (s.n_scored, s.n_skipped, s.n_failed, s.exit_code) == (2, 2, 0, 0)
    manifest = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == sum(1 for p in SAMPLE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert sorted(Path(e["path"]).name for e in manifest if e["reason"] == "label_map") == ["lesion_mask.nii.gz"] * 2
    with open(tmp_path / "out/results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    assert len(rows) == 2
    for case in ("ct_head_phantom", "mr_flair_phantom"):
        mask = np.asarray(nib.load(SAMPLE / case / "lesion_mask.nii.gz").dataobj)
        lesion_slices = set(np.nonzero(mask.sum((0, 1)))[0].tolist())
        row = next(r for r in rows if (r["modality"] == "CT") == (case == "ct_head_phantom"))  # DICOM CT, NIfTI MR
        top = [int(k) for k in row["top_slices"].split()]
        assert top[0] in lesion_slices, (case, top, sorted(lesion_slices))
