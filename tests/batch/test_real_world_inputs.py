"""``medad score`` on a generated hospital export with one folder per real-world oddity (issue 12).

Each case asserts its row in ``results.csv`` (status and reason), its files in ``manifest.jsonl`` (status and reason),
and that the good series scored in the same run are unaffected. The cases run in one scoring run (tiny backbone,
small volumes); a few checks that need their own runs use small subsets of the export.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from real_world_export import CASES, GOOD, PYDICOM_FILES, make_real_world_export, remove_deep_tree

from medad.batch import OutputWriteError, ScoreConfigError, score
from medad.io import find_series


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("hospital")
    where = make_real_world_export(root)
    yield root / "export", where
    remove_deep_tree(root / "export")


def _alarm(seconds: int):
    def fail(*_):
        raise TimeoutError(f"no answer after {seconds} s: something blocked (a FIFO opened?)")

    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


@pytest.fixture(scope="module")
def scored(export, tmp_path_factory, tiny_detector):
    ex, where = export
    out = tmp_path_factory.mktemp("scored") / "out"
    _alarm(900)  # a FIFO opened by mistake would block forever: fail instead
    try:
        summary = score([ex], out, detector=tiny_detector, workers=1, progress=False, batch_size=4,
                        exclude=["*.secret"])
    finally:
        signal.alarm(0)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out, summary, manifest, rows, where


def _files_of(manifest, path: Path) -> list[dict]:
    p = str(path)
    return [e for e in manifest if e["path"] == p or e["path"].startswith(p + "/")]


def _row_of(rows, entries) -> dict | None:
    """The results.csv row of the series the manifest entries belong to (None when they belong to no series)."""
    for e in entries:
        key, out_dir = e.get("series_key"), e.get("output_dir", "")
        for r in rows:
            if (key and r["series_key"] == key) or (out_dir and r["series_key"] == out_dir.split("/")[-1]) or (
                    out_dir and r["output_dir"] == out_dir):
                return r
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_case_has_its_status_and_reason(scored, case):
    out, summary, manifest, rows, where = scored
    row_status, row_reason, file_status, file_reason = CASES[case]
    entries = _files_of(manifest, where[case])
    assert entries, f"{case}: no manifest entry for {where[case]}"
    assert {(e["status"], e["reason"]) for e in entries} == {(file_status, file_reason)}, entries[:2]
    assert all(e["detail"] or e["status"] == "scored" for e in entries)
    row = _row_of(rows, entries)
    if row_status is None:
        assert row is None or row["status"] == "ok", (case, row)  # a duplicate copy belongs to a scored series
        return
    assert row is not None, f"{case}: no row in results.csv"
    assert row["status"] == row_status and row["error"].partition(":")[0] == row_reason, row
    if row_status == "ok":
        assert math.isfinite(float(row["volume_score"])) and int(row["slices"]) >= 1
        nifti = nib.load(out / row["output_dir"] / "anomaly_map.nii.gz")
        assert np.isfinite(np.asarray(nifti.dataobj)).all()
    else:
        assert row["volume_score"] == "" and len(row["error"]) > len(row_reason) + 5  # a reason, then what it means


def test_good_series_next_to_the_bad_ones_are_scored(scored):
    out, summary, manifest, rows, where = scored
    for case in GOOD:
        row = _row_of(rows, _files_of(manifest, where[case]))
        assert row["status"] == "ok" and row["error"] == "" and float(row["volume_score"]) > 0, (case, row)
    iop = _row_of(rows, _files_of(manifest, where["iop_jitter"]))
    assert int(iop["slices"]) == 6 and int(iop["n_files"]) == 6  # one volume, not two interleaved halves


def test_every_input_path_once_and_a_truthful_summary(scored, export):
    out, summary, manifest, rows, where = scored
    ex, _ = export
    paths = [e["path"] for e in manifest]
    assert len(paths) == len(set(paths)) == summary.n_files
    assert str(where["deep_tree"]) in paths and str(where["fifo"]) in paths
    failed = [r["error"][:40] for r in rows if r["status"] == "failed"]
    assert summary.exit_code == 1 and summary.n_failed == len(failed), (summary.failures, failed)
    assert summary.n_scored == sum(r["status"] == "ok" for r in rows) == 8
    assert summary.n_warned == 3  # the NaN voxel, the single sagittal slice, the thin coronal series
    assert summary.verdict().startswith(f"exit code 1: {summary.n_failed} series failed")
    assert summary.n_series == len(rows)
    for r in rows:  # deterministic tables: no object addresses, process ids or timings
        assert " at 0x" not in r["error"] and "pid" not in r["error"], r["error"]


def test_nan_voxel_is_scored_on_the_finite_voxels_with_a_warning(scored):
    out, _, manifest, rows, where = scored
    row = _row_of(rows, _files_of(manifest, where["nan_voxel_nifti"]))
    assert "1 of 8640 voxels" in row["error"] and "scored on the finite voxels" in row["error"]
    good = _row_of(rows, _files_of(manifest, where["good_mr_nifti"]))
    assert 0 < float(row["volume_score"]) and abs(float(row["volume_score"]) - float(good["volume_score"])) < 0.2


def test_thin_series_are_scored_in_their_own_plane(scored):
    _, _, manifest, rows, where = scored
    sag = _row_of(rows, _files_of(manifest, where["single_sagittal"]))
    cor = _row_of(rows, _files_of(manifest, where["thin_coronal"]))
    assert "scored in its own sagittal plane" in sag["error"] and sag["slices"] == "1"
    assert "scored in its own coronal plane" in cor["error"] and cor["slices"] == "3"


def test_the_huge_header_fails_before_anything_is_allocated(export):
    ex, where = export
    code = (f"import re, time; from medad.io import find_series; t = time.perf_counter(); "
            f"i = find_series([{str(where['huge_header_nifti'])!r}]); "  # peak RSS of this process (not the parent's)
            "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(i.rejected[0].reason, time.perf_counter() - t, int(hwm) // 1024)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    reason, seconds, rss_mb = res.stdout.split()
    assert reason == "truncated" and float(seconds) < 5 and int(rss_mb) < 600, res.stdout + res.stderr[-2000:]
    index = find_series([where["huge_header_nifti"]])
    assert "2048x2048x512 int16" in index.rejected[0].detail and "gzip file holds at most" in index.rejected[0].detail


def test_parallel_indexing_gives_the_same_index(export, monkeypatch, capsys):
    import medad.io.dicom_index as di

    ex, _ = export
    one = find_series([ex], exclude=["*.secret"], workers=1)
    monkeypatch.setattr(di, "_PARALLEL_MIN_FILES", 0)
    two = find_series([ex], exclude=["*.secret"], workers=2, progress=True)
    assert two.files == one.files and two.series == one.series and two.rejected == one.rejected
    assert "files/s" in capsys.readouterr().err  # the progress bar shows the indexing rate


def test_the_lean_reader_agrees_with_pydicom():
    """On pydicom's own test files (all encodings, compressed, odd and broken files) the lean header reader, where it
    takes a file at all, gives exactly the header pydicom gives."""
    import warnings

    from medad.io._header import read_header
    from medad.io.dicom_index import headers as H

    lean = 0
    files = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p in files:
            size = p.stat().st_size
            try:
                fast = H.summarize(str(p), size, H.lean_values(str(p), size))
            except Exception:  # noqa: BLE001 - not taken: pydicom reads it
                continue
            ds, bad = read_header(str(p))
            slow = H.summarize(str(p), size, H.values_from_dataset(ds) if ds is not None else {}, *(bad or ()))
            assert fast == slow, p.name
            lean += 1
    assert lean >= 60 and len(files) >= 150


def test_tables_are_identical_between_two_runs(export, tiny_detector, tmp_path):
    ex, where = export
    subset = [where[c] for c in ("conflict", "all_inf_dicom", "huge_header_nifti", "fifo", "zero_byte", "no_uid",
                                 "pydicom_minimal", "zip_archive")]
    tables = []
    for name in ("a", "b"):
        score(subset, tmp_path / name, detector=tiny_detector, workers=0, progress=False)
        tables.append([(tmp_path / name / n).read_bytes() for n in ("results.csv", "manifest.jsonl")])
    assert tables[0] == tables[1]


def test_clean_messages_hold_no_addresses_pids_or_paths():
    from medad.io import clean_message

    msg = ("Unable to read <_io.BytesIO object at 0x7f3a2b1c0d90> in <_io.BufferedReader name='/x/DOE^JOHN/1.dcm'>; "
           "DataLoader worker (pid(s) 4242, 4243) exited; .map.nii.gz.tmp-77-1a2b3c4d.nii.gz; /x/DOE^JOHN/1.dcm")
    out = clean_message(msg, "/x/DOE^JOHN/1.dcm")
    assert "0x" not in out and "4242" not in out and "DOE" not in out and "1a2b3c4d" not in out, out


def test_out_is_a_file_or_unwritable(export, tmp_path, capsys):
    from medad.cli import main

    ex, where = export
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder\n")
    common = ["--adapters", "none", "--backbone", "tiny", "--no-progress", "--workers", "0"]
    assert main(["score", str(where["good_ct"]), "--out", str(blocker), *common]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert main(["score", str(where["good_ct"]), "--out", str(blocker / "sub"), *common]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
    with pytest.raises(ScoreConfigError, match="is a file"):
        score([where["good_ct"]], blocker, progress=False)


def test_disk_full_stops_cleanly_and_a_rerun_finishes(export, tiny_detector, tmp_path, monkeypatch):
    import medad.batch.execute as execute
    import medad.batch.merge as merge

    ex, where = export
    inputs = [where[c] for c in ("good_ct", "iop_jitter", "deflated")]
    out = tmp_path / "out"
    real_write, calls = execute.write_outputs, []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(execute, "write_outputs", full_disk)
    with pytest.raises(OutputWriteError, match="No space left on device.*rerun the same command"):
        score(inputs, out, detector=tiny_detector, workers=0, progress=False)
    assert len(list((out / "series").glob("*/record.json"))) >= 1  # the first series is kept
    monkeypatch.setattr(execute, "write_outputs", real_write)

    def full_at_merge(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(merge, "write_results_csv", full_at_merge)  # disk full while writing the tables
    with pytest.raises(OutputWriteError, match="tables"):
        score(inputs, out, detector=tiny_detector, workers=0, progress=False)
    monkeypatch.undo()
    s = score(inputs, out, detector=tiny_detector, workers=0, progress=False)  # space again: the job finishes
    assert (s.n_scored, s.n_reused, s.exit_code) == (3, 3, 0) and (out / "results.csv").is_file()
