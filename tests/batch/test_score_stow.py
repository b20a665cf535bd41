"""``medad score --stow URL`` against a real Orthanc with its DICOMweb plugin (skipped if Orthanc is not installed)."""

from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pytest
import requests
from orthanc import orthanc  # noqa: F401  (fixture)
from score_export import make_messy_export

from medad.batch import score
from medad.batch.execute import StowGate


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_messy_export(tmp_path_factory.mktemp("pacs"))


def test_stow_gate_stops_calling_a_dead_server():
    calls = []

    def send(url, paths):
        calls.append(url)
        raise requests.ConnectionError("connection refused")

    gate = StowGate("http://127.0.0.1:9/dicom-web", max_failures=2, send=send)
    for _ in range(4):
        with pytest.raises(OSError):  # requests.ConnectionError, then ConnectionError
            gate(["a.dcm"])
    assert len(calls) == 2  # the 3rd and 4th series fail at once instead of waiting for retries


def test_stow_pm_and_seg_to_orthanc_and_retry_after_failure(export, orthanc, tiny_detector, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    wrong = f"{orthanc.url}/no-dicomweb-here"  # the server answers 404
    s = score([export], out, detector=tiny_detector, workers=0, progress=False, exclude=["*/nifti/*"], stow=wrong)
    assert s.n_scored == 0 and s.n_failed == 6 and s.exit_code == 1  # 5 not sent + the truncated file
    assert sorted(k.split("]")[0] for _, k in s.failures) == ["[index", "[load"] + ["[stow"] * 4
    assert orthanc.get("/instances") == []

    s = score([export], out, detector=tiny_detector, workers=0, progress=False, exclude=["*/nifti/*"], stow=orthanc.dicomweb)
    assert (s.n_scored, s.n_failed, s.n_reused) == (4, 2, 0)
    assert len(orthanc.get("/instances")) == 8  # one PM + one SEG per scored DICOM series
    recs = [json.loads(p.read_text()) for p in out.glob("series/*/record.json")]
    ok = [r for r in recs if r["status"] == "ok"]
    assert all(r["outputs"]["stow"] == {"url": orthanc.dicomweb, "stored": 2} for r in ok)
    by_modality = {}
    for sid in orthanc.get("/series"):
        info = orthanc.get(f"/series/{sid}")
        by_modality.setdefault(info["MainDicomTags"]["Modality"], []).append(info)
    assert len(by_modality["SEG"]) == 4 and sum(len(v) for v in by_modality.values()) == 8

    # the stored SEG is the graded map on the source grid
    r = ok[0]
    seg = hd.seg.segread(out / r["outputs"]["seg"])
    assert seg.SeriesInstanceUID in {orthanc.get(f"/series/{i}")["MainDicomTags"]["SeriesInstanceUID"]
                                     for i in orthanc.get("/series")}
    assert seg.get_volume(combine_segments=True).array.shape[0] == r["n_slices"]
    assert np.isclose(max(r["slice_scores"]), r["top_slice_scores"][0])

    # a rerun sends nothing again and keeps the same instances (deterministic UIDs)
    s = score([export], out, detector=tiny_detector, workers=0, progress=False, exclude=["*/nifti/*"], stow=orthanc.dicomweb)
    assert s.n_reused == 4 and len(orthanc.get("/instances")) == 8
    # NIfTI volumes have no PM/SEG to send: scored once, not redone on every --stow rerun
    for reused in (0, 2):  # 2: the volume and its mask (skipped as a label map)
        s = score([export / "nifti"], tmp_path / "nii", detector=tiny_detector, workers=0, progress=False,
                  stow=orthanc.dicomweb)
        assert (s.n_scored, s.n_reused) == (1, reused)
    # other settings (here top_k) make new PM/SEG instances instead of duplicates a PACS would ignore
    s = score([export], out, detector=tiny_detector, workers=0, progress=False, exclude=["*/nifti/*"],
              stow=orthanc.dicomweb, top_k=2, overwrite=True)
    assert (s.n_scored, s.n_reused) == (4, 0) and len(orthanc.get("/instances")) == 16
