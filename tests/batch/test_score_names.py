"""No patient names through file or folder names (issue 11): an export whose folders and files are named after
patients (non-ASCII too) leaves no trace of those names in results.csv, report.html, summary.json, stdout or the log;
``--show-paths`` opts in; the manifest (the operator's audit trail) keeps the paths."""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest

from medad.cli import main
from medad.synthetic import make_ct_phantom, make_mr_phantom, write_dicom_series

NAMES = ("MÜLLER", "JÖRG", "Kopf", "Núñez", "María", "Doe_John", "Øster", "Åse", "1950-03-02")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("names") / "exports"
    hu, _, aff = make_ct_phantom(31, (32, 32, 5), n_lesions=1, spacing=(6.0, 6.0, 8.0))
    write_dicom_series(hu, aff, root / "MÜLLER^JÖRG 1950-03-02" / "CT Kopf nativ", seed="names-ct")
    mr, _, aff = make_mr_phantom(32, (32, 32, 5), n_lesions=1, spacing=(6.0, 6.0, 8.0))
    (root / "Núñez, María").mkdir(parents=True)
    nib.save(nib.Nifti1Image(mr.astype(np.int16), aff), root / "Núñez, María" / "Doe_John_T1.nii.gz")
    (root / "Øster Åse").mkdir()
    (root / "Øster Åse" / "Øster_Åse_flair.nii.gz").write_bytes(b"\x1f\x8b not really gzip " * 8)
    good = sorted((root / "MÜLLER^JÖRG 1950-03-02" / "CT Kopf nativ").iterdir())[0].read_bytes()
    (root / "Øster Åse" / "Øster_Åse_cut.dcm").write_bytes(good[: len(good) // 2])  # truncated slice
    return root


def _run(export, out, capsys, caplog, *extra):
    with caplog.at_level(logging.INFO):
        code = main(["score", str(export), "--out", str(out), "--adapters", "none", "--backbone", "tiny",
                     "--workers", "0", "--no-progress", "--dicom-out", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err, caplog.text


def _texts(out):
    return {name: (out / name).read_text(encoding="utf-8") for name in ("results.csv", "report.html", "summary.json")}


def test_no_file_or_folder_name_reaches_a_human_facing_output(export, tmp_path, capsys, caplog):
    code, stdout, log = _run(export, tmp_path / "out", capsys, caplog)
    assert code == 1  # the damaged files fail the run: their rows must still say why, without names
    texts = {**_texts(tmp_path / "out"), "stdout": stdout, "log": log}
    rows = texts["results.csv"].splitlines()
    assert len(rows) >= 1 + 3 and "ok" in texts["results.csv"] and "failed" in texts["results.csv"]
    for where, text in texts.items():
        for name in NAMES:
            assert name not in text, f"{name!r} leaked into {where}"
        assert str(export) not in text, where
    summary = json.loads(texts["summary.json"])
    assert summary["failures"] and all(not k.startswith("/") for k, _ in summary["failures"])
    # the manifest is the operator's audit trail: it keeps the paths
    paths = [json.loads(line)["path"] for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert any(p.endswith("Núñez, María/Doe_John_T1.nii.gz") for p in paths)
    assert any("MÜLLER^JÖRG 1950-03-02/CT Kopf nativ/" in p for p in paths)


def test_show_paths_opts_in(export, tmp_path, capsys, caplog):
    _run(export, tmp_path / "out", capsys, caplog, "--show-paths")
    texts = _texts(tmp_path / "out")
    assert "Doe_John_T1.nii.gz" in texts["results.csv"] and "Doe_John_T1.nii.gz" in texts["report.html"]
