"""Unit tests of the ``medad score`` helpers: crash-tolerant decoding, sharding, OOM back-off, names, report."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from monai.data import MetaTensor

from medad.batch import execute, load
from medad.batch.records import SeriesOutcome, series_dir_name
from medad.batch.report import write_report
from medad.io import SeriesRecord


def _rec(key: str, n: int = 4) -> SeriesRecord:
    return SeriesRecord(key=key, kind="nifti", study_uid="", series_uid="", modality="", body_part="",
                        series_description=key, n_files=1, files=(f"/x/{key}.nii.gz",), shape=(4, 4, n))


def test_series_loader_survives_a_decoder_crash(monkeypatch):
    parent = os.getpid()

    def fake_load(record):
        if record.key.startswith("bad") and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGSEGV)  # a decoder segfault in the worker process
        return MetaTensor(torch.rand(1, 4, 4, 3))

    monkeypatch.setattr(load, "load_series", fake_load)
    records = [_rec("a"), _rec("bad"), _rec("c"), _rec("d"), _rec("bad2"), _rec("f")]
    for workers in (1, 2):  # with 2 workers an innocent neighbour may be in flight when "bad" crashes
        got = [(r.key, v is not None, err.split(":")[0]) for r, v, err, _ in load.SeriesLoader(records, workers)]
        assert got == [("a", True, ""), ("bad", False, "WorkerCrash"), ("c", True, ""), ("d", True, ""),
                       ("bad2", False, "WorkerCrash"), ("f", True, "")]


def test_series_loader_in_process_reports_errors(monkeypatch):
    def fake_load(record):
        raise ValueError(f"cannot decode {record.key}\nsecond line")

    monkeypatch.setattr(load, "load_series", fake_load)
    [(r, v, err, _)] = list(load.SeriesLoader([_rec("a")], workers=0))
    assert v is None and err == "ValueError: cannot decode a second line"


def test_balanced_shards_cover_everything_once_and_balance_slices():
    records = [_rec(f"s{i}", n) for i, n in enumerate([100, 10, 10, 10, 60, 40, 5, 5])]
    shards = execute.balanced_shards(records, 3)
    keys = [r.key for sh in shards for r in sh]
    assert sorted(keys) == sorted(r.key for r in records) and len(keys) == len(set(keys))
    loads = [sum(r.shape[-1] for r in sh) for sh in shards]
    assert max(loads) - min(loads) <= 40 and max(loads) == 100
    for sh in shards:  # original order kept inside a shard
        assert [records.index(r) for r in sh] == sorted(records.index(r) for r in sh)
    assert execute.balanced_shards(records, 3) == shards and execute.balanced_shards(records, 1) == [records]


def test_out_of_memory_halves_the_batch(monkeypatch):
    class Runner:
        batch_size, calls = 32, 0

        def run(self, volume):
            self.calls += 1
            if self.batch_size > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return "ok"

    r = Runner()
    assert execute.run_with_backoff(r, None) == "ok" and r.batch_size == 8 and r.calls == 3
    r.batch_size = 1
    r.run = lambda v: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("still too big"))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        execute.run_with_backoff(r, None)


def test_label_map_detection():
    mask = MetaTensor(torch.zeros(1, 8, 8, 4))
    mask[0, 2:4, 2:4, 1] = 1
    assert load.label_map_reason(mask, "nifti").startswith("label_map: holds only the integer values {0, 1}")
    assert load.label_map_reason(mask, "dicom") == ""  # DICOM series are images
    img = MetaTensor(torch.arange(256.0).reshape(1, 8, 8, 4))
    assert load.label_map_reason(img, "nifti") == ""


def test_series_dir_names_are_stable_unique_and_safe():
    a, b = series_dir_name("1.2.3#1", "CT", 3), series_dir_name("1.2.3#2", "CT", 3)
    assert a != b and a.startswith("CT_0003_") and a == series_dir_name("1.2.3#1", "CT", 3)
    assert series_dir_name("/data/p/../x y.nii.gz").startswith("VOL_0000_")
    assert "/" not in series_dir_name("/a/b.nii.gz", "M/R", None)


def test_report_escapes_text_and_sorts_by_score(tmp_path):
    def rec(key, score, desc):
        return SeriesOutcome(key=key, dir=key, status="ok", fingerprint="", volume_score=score, n_slices=3,
                             series={"series_description": desc, "modality": "CT", "kind": "dicom"}, top_slices=[1],
                             top_slice_scores=[score], outputs={"pngs": [f"series/{key}/top1.png"]})

    bad = SeriesOutcome(key="k3", dir="k3", status="failed", fingerprint="", series={}, stage="load",
                        error="SeriesLoadError: <b>broken</b>")
    html = write_report(tmp_path / "r.html", [rec("k1", 0.2, "<script>x</script>"), rec("k2", 0.9, "b"), bad],
                        n_files=7).read_text()
    assert "<script>x" not in html and "&lt;script&gt;" in html and "&lt;b&gt;broken" in html
    assert html.index("k2") < html.index("k1") and "2 series scored, 1 failed" in html


def test_shared_memory_warning(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(64 << 20, 0, 64 << 20))  # Docker's default /dev/shm
    big = [_rec("a", 600)]
    big[0] = SeriesRecord(**{**big[0].__dict__, "shape": (512, 512, 600)})
    assert "--shm-size" in load.check_shared_memory(big, workers=2, path=str(tmp_path))
    assert load.check_shared_memory(big, workers=0, path=str(tmp_path)) == ""
    assert load.check_shared_memory([_rec("b", 4)], workers=2, path=str(tmp_path)) == ""
