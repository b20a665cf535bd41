"""``medad.batch.score`` on a generated messy PACS export: accountability, statuses, outputs, resume, filters."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from score_export import N_FILES, N_SERIES, ROWS, expected_for, make_messy_export

from medad.batch import ScoreConfigError, score
from medad.batch.records import acquire_run_lock, release_run_lock


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_messy_export(tmp_path_factory.mktemp("pacs"))


@pytest.fixture(scope="module")
def scored(export, tmp_path_factory, tiny_detector):
    out = tmp_path_factory.mktemp("scored") / "out"
    summary = score([export], out, detector=tiny_detector, workers=1, progress=False, batch_size=4)
    return out, summary


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def _results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_file_accounted_for_with_the_right_status(export, scored):
    out, summary = scored
    entries = _manifest(out)
    on_disk = sorted(str(p) for p in export.rglob("*") if p.is_file())
    assert sorted(e["path"] for e in entries) == on_disk  # every input file exactly once
    for e in entries:
        rel = Path(e["path"]).relative_to(export).as_posix()
        status, reason = expected_for(rel)
        assert (e["status"], e["reason"]) == (status, reason), rel
        if status == "scored":
            assert (out / e["output_dir"] / "record.json").is_file()
    assert summary.n_files == len(on_disk) == N_FILES
    assert summary.files_by_status == {"scored": 27, "skipped": 6, "failed": 6}
    assert summary.skip_reasons["truncated"] == 1 and summary.skip_reasons["localizer"] == 2


def test_results_for_the_good_series_and_failures_reported(export, scored):
    out, summary = scored
    rows = _results(out)
    assert sorted((r["status"], r["error"].partition(":")[0]) for r in rows) == ROWS
    assert summary.n_series == len(ROWS) and summary.n_selected == N_SERIES  # every series found has its row
    by_desc = {r["series_description"]: r for r in rows}
    mask = next(r for r in rows if r["error"].startswith("label_map"))
    assert mask["error"].startswith("label_map: holds only the integer values {0, 1}")
    assert "SeriesLoadError" in by_desc["Corrupt pixels"]["error"] and by_desc["Corrupt pixels"]["volume_score"] == ""
    assert by_desc["FLAIR"]["modality"] == "MR"
    for r in rows:
        if r["status"] != "ok":
            continue
        tops = [int(k) for k in r["top_slices"].split()]
        n = int(r["slices"])
        assert n == {"Head CT": 8}.get(r["series_description"], 6)
        assert r["error"] == ""  # no warning: finite, thick enough
        assert 1 <= len(tops) <= 5 and all(0 <= k < n for k in tops)
        assert 0.0 <= float(r["volume_score"]) <= 1.0
        sdir = out / r["output_dir"]
        img = nib.load(sdir / "anomaly_map.nii.gz")
        assert img.shape == (40, 36, n) and img.get_data_dtype() == np.float32
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1
        assert sorted(p.name for p in sdir.glob("top*.png")) == sorted(
            f"top{i}_slice{k:04d}.png" for i, k in enumerate(tops[:3], start=1))
    assert (summary.n_scored, summary.n_failed, summary.n_skipped, summary.n_files_failed) == (5, 2, 4, 1)
    assert summary.exit_code == 1 and summary.verdict().startswith("exit code 1: 2 series failed, 1 input files")
    truncated = next(r for r in rows if r["error"].startswith("truncated"))
    assert [k for k, _ in summary.failures] == [by_desc["Corrupt pixels"]["series_key"], truncated["series_key"]]


def test_no_patient_identifiers_in_tables_and_report(scored):
    out, _ = scored
    for name in ("results.csv", "manifest.jsonl", "report.html", "summary.json"):
        text = (out / name).read_text()
        assert "PHANTOM^SYNTHETIC" not in text and "ANON-PHANTOM" not in text, name
    html = (out / "report.html").read_text()
    rows = [r for r in _results(out) if r["status"] == "ok"]
    best = max(rows, key=lambda r: float(r["volume_score"]))
    assert html.index(best["series_key"]) < min(html.index(r["series_key"]) for r in rows if r is not best)
    assert html.count("<img ") == 15 and "Failed series" in html


def test_rerun_reuses_done_series_and_changes_nothing(export, scored, tiny_detector):
    out, _ = scored
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent.name != "out"}
    tables = {n: (out / n).read_bytes() for n in ("results.csv", "manifest.jsonl")}
    summary = score([export], out, detector=tiny_detector, workers=0, progress=False, retry_failed=False)
    assert summary.n_reused == 7 and summary.n_scored == 5
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # no series output rewritten
    assert {n: (out / n).read_bytes() for n in tables} == tables


def test_filters_and_settings_guard(export, scored, tiny_detector, tmp_path):
    out = tmp_path / "mr"
    s = score([export], out, detector=tiny_detector, workers=0, progress=False, modality="mr")
    # exit 0: the damaged files belong to CT series, which were filtered out
    assert (s.n_selected, s.n_scored, s.n_filtered, s.exit_code) == (1, 1, 10, 0)
    rows = _results(out)
    assert sorted(r["status"] for r in rows) == ["filtered"] * 10 + ["ok"]
    filtered = [e for e in _manifest(out) if e["reason"] == "filtered"]
    assert len(filtered) == 8 + 6 + 6 + 5 + 1 + 1 and all("modality" in e["detail"] for e in filtered)
    s = score([export], tmp_path / "desc", detector=tiny_detector, workers=0, progress=False,
              series_description="^head ct$")
    assert s.n_selected == 1
    s = score([export], tmp_path / "excl", detector=tiny_detector, workers=0, progress=False,
              exclude=["*/study1/*", "C0*.dcm", "*/nifti/*"])
    assert (s.n_selected, s.n_scored, s.n_failed) == (1, 1, 1)  # the RLE series is left (+ the truncated file's row)
    excluded = [e for e in _manifest(tmp_path / "excl") if e["reason"] == "excluded"]  # never opened, accounted for
    assert len(excluded) == 24 + 5 + 2 and all("matches --exclude" in e["detail"] for e in excluded)
    with pytest.raises(ScoreConfigError, match="other settings"):
        score([export], out, detector=tiny_detector, workers=0, progress=False, modality="mr", top_k=2)
    for reused in (0, 1):  # --overwrite rescores with the new settings; the same command again resumes
        s = score([export], out, detector=tiny_detector, workers=0, progress=False, modality="mr", top_k=2,
                  overwrite=True)
        assert (s.n_scored, s.n_reused) == (1, reused)
    assert [len(r["top_slices"].split()) for r in _results(out) if r["status"] == "ok"] == [2]
    lock = acquire_run_lock(out)  # another run is writing there
    with pytest.raises(ScoreConfigError, match="another medad score run"):
        score([export], out, detector=tiny_detector, workers=0, progress=False, modality="mr")
    release_run_lock(lock)
    with pytest.raises(ScoreConfigError, match="neither a file nor a folder"):
        score([export / "nope"], tmp_path / "x", detector=tiny_detector, progress=False)
    assert not any(".tmp-" in n for _, _, names in os.walk(out) for n in names)  # no temporaries left


def test_dry_run_plans_without_scoring(export, tiny_detector, tmp_path):
    out = tmp_path / "plan"
    s = score([export], out, detector=tiny_detector, progress=False, dry_run=True)
    assert (s.n_selected, s.n_scored, s.n_reused) == (N_SERIES, 0, 0)
    assert not (out / "series").exists()
    statuses = {e["status"] for e in _manifest(out)}
    assert statuses == {"pending", "skipped", "failed"}  # failed: the truncated file
    assert {r["status"] for r in _results(out)} == {"pending", "skipped", "failed"}  # rejected at indexing: known
    assert {r["status"] for r in _results(out) if r["error"].startswith("not scored yet")} == {"pending"}



def test_cli_exit_codes(export, tmp_path, capsys):
    from medad.cli import main

    common = ["--adapters", "none", "--backbone", "tiny", "--no-progress", "--workers", "0"]
    assert main(["score", str(export / "missing"), "--out", str(tmp_path / "a"), *common]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    assert main(["score", str(export / "study1"), "--out", str(tmp_path / "b"), "--dry-run", *common]) == 0
    assert "dry run: 3 series (20 files) would be scored" in capsys.readouterr().out
    assert main(["score", str(export / "study1/head"), "--out", str(tmp_path / "c"), *common]) == 0
    assert "1 scored (0 from an earlier run), 0 failed" in capsys.readouterr().out


def test_output_folder_inside_the_input_is_not_indexed(export, tiny_detector, tmp_path):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(export / "study1/head", src)
    out = src / "results"
    first = score([src], out, detector=tiny_detector, workers=0, progress=False, dicom_out=True)
    tables = {n: (out / n).read_bytes() for n in ("results.csv", "manifest.jsonl")}
    again = score([src], out, detector=tiny_detector, workers=0, progress=False, dicom_out=True)
    assert (first.n_files, first.n_series, again.n_series, again.n_reused) == (8, 1, 1, 1)
    assert {n: (out / n).read_bytes() for n in tables} == tables

