"""The reviewer loop cannot silently collapse: bank normalizers refitted on held-out normal slices, the operating
point refitted or dropped, and a guard that refuses a site checkpoint blanking the known lesion studies."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
import requests
import SimpleITK as sitk
import torch
from monailabel.client import MONAILabelClient

from labelkit import APP_SRC, TEST_CONF, label_client, medad_label_server, write_phantom_nifti

DEMO_SHAPE, DEMO_SPACING = (96, 96, 24), (2.0, 2.0, 5.0)
NIFTI = {"params": json.dumps({"result_extension": ".nii.gz"})}


def _coverage(label_file: str, mask: np.ndarray) -> float:
    """Fraction of the lesion voxels the returned label map labels (any grade)."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0)
    assert labels.shape == mask.shape
    return float((labels[mask] > 0).mean())


@pytest.fixture(scope="module")
def demo_studies(tmp_path_factory):
    """A lesion study with its reference mask next to it (a known lesion study) and a normal study."""
    d = tmp_path_factory.mktemp("reviewer_studies")
    write_phantom_nifti(d / "case_l.nii.gz", seed=2, shape=DEMO_SHAPE, spacing=DEMO_SPACING,
                        mask_path=d / "case_l_mask.nii.gz")
    write_phantom_nifti(d / "case_n.nii.gz", seed=3, n_lesions=0, shape=DEMO_SHAPE, spacing=DEMO_SPACING)
    return d


def test_mark_normal_then_train_keeps_the_lesion_labelled(demo_studies, tmp_path):
    """As a reviewer in 3D Slicer: Run on the lesion study, Run 'mark_normal' on the normal one, Train, Run again."""
    mask = np.asarray(nib.load(str(demo_studies / "case_l_mask.nii.gz")).dataobj) > 0
    params = {"result_extension": ".nrrd", "result_dtype": "uint8"}
    with medad_label_server(demo_studies, tmp_path / "ws", {"device": "cpu", "shots": "2"}, tmp_path / "run") as url:
        c = MONAILabelClient(url, tmpdir=str(tmp_path))
        assert c.info()["models"]["anomaly"]["medad"]["backbone"] == "tiny"  # the demo model by default
        label, res = c.infer("anomaly", "case_l", params)
        before = _coverage(label, mask)
        assert before > 0.2, res["summary"]  # the demo model labels this lesion to start with

        label, res = c.infer("mark_normal", "case_n", params)  # one step, as 'Run' in Slicer/OHIF
        assert res["marked_normal"] is True and res["normal_studies"] == 1
        assert not sitk.GetArrayFromImage(sitk.ReadImage(label)).any()  # nothing drawn
        assert c.train_start("anomaly", {})["status"] in ("SUBMITTED", "RUNNING")
        deadline = time.monotonic() + 600
        while (task := c.train_status())["status"] in ("SUBMITTED", "RUNNING"):
            assert time.monotonic() < deadline, task
            time.sleep(1)
        deadline = time.monotonic() + 60
        while "reviewer_loop" not in (medad := c.info()["models"]["anomaly"]["medad"]):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        report = medad["reviewer_loop"]
        assert report["normal_studies"] == 1 and report["guard"]["checked"] == 1
        assert report["guard"]["studies"][0]["image"] == "case_l"
        assert report["guard"]["studies"][0]["kind"] == "reference mask"
        assert set(report["bank_normalizers"]) == {"pixel_bank", "image_bank"}
        if report["status"] == "refused":  # a backbone whose bank does not separate the lesions
            assert task["status"] == "ERROR" and "NOT activated" in report["guard"]["message"]
            assert medad["site_checkpoint"] is False
        else:
            assert task["status"] == "DONE" and report["status"] == "activated"
        time.sleep(1)
        label, res = c.infer("anomaly", "case_l", params)
        after = _coverage(label, mask)
        assert after >= 0.5 * before, (before, after, report["guard"])
        print(f"lesion voxels labelled {before:.3f} -> {after:.3f}; reviewer loop {report['status']}; "
              f"guard {json.dumps(report['guard']['studies'])}")


def test_guard_refuses_a_checkpoint_that_blanks_known_lesions(demo_studies, tmp_path, monkeypatch):
    """A candidate checkpoint whose maps lose the known lesions is not activated. The defect simulated is a normalizer
    refit gone wrong (issue 13's were not refitted at all, which halved the maps; halving is not enough to lose the
    lesions of the pre-trained demo model, so the ranges here blank the maps outright)."""
    import medad.label.train_task as tt

    def broken_refit(detector, held_out, batch_size=16):
        for branch in ("pixel_text", "pixel_bank"):
            detector.normalizer.fit(branch, torch.tensor([0.0, 1e6]))
        return {"pixel_bank": [0.0, 1e6]}

    monkeypatch.setattr(tt, "refit_bank_normalizers", broken_refit)
    app = tmp_path / "app"
    import shutil

    shutil.copytree(APP_SRC, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
    mask = np.asarray(nib.load(str(demo_studies / "case_l_mask.nii.gz")).dataobj) > 0
    with label_client(app, demo_studies, {"device": "cpu", "shots": "2"}, tmp_path) as c:
        r = c.post("/infer/anomaly?image=case_l&output=image", data=NIFTI)
        (tmp_path / "before.nii.gz").write_bytes(r.content)
        before = _coverage(str(tmp_path / "before.nii.gz"), mask)
        assert c.post("/medad/mark_normal?image=case_n").json()["marked_normal"] is True
        r = c.post("/train/anomaly?run_sync=true")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "NOT activated" in detail and "'case_l'" in detail and "%" in detail
        assert not (tmp_path / "workspace" / "site_adapters.pt").exists()  # nothing saved
        medad = c.get("/info/").json()["models"]["anomaly"]["medad"]
        assert medad["site_checkpoint"] is False and medad["reviewer_loop"]["status"] == "refused"
        study = medad["reviewer_loop"]["guard"]["studies"][0]
        assert study["labelled_after"] < 0.5 * study["labelled_before"]
        r = c.post("/infer/anomaly?image=case_l&output=image", data=NIFTI)
        (tmp_path / "after.nii.gz").write_bytes(r.content)
        assert _coverage(str(tmp_path / "after.nii.gz"), mask) == before  # the active model is unchanged


def test_bank_normalizers_are_refit_on_held_out_normal_slices(studies_dir, app_dir, tmp_path):
    """After training, the bank branch's min/max are those of the held-out (not banked) normal slices."""
    from medad.label.config import LabelConfig
    from medad.label.store import DetectorStore, load_source
    from medad.label.train_task import _held_out_index

    with label_client(app_dir, studies_dir, TEST_CONF, tmp_path) as c:
        assert c.post("/medad/mark_normal?image=case_n").status_code == 200
        r = c.post("/train/anomaly?run_sync=true")
        assert r.status_code == 200 and r.json()["status"] == "done", r.text
        report = r.json()
        assert report["guard"]["checked"] == 0 and "unchecked" in report["guard"]["message"]  # no known lesion
    ckpt = torch.load(tmp_path / "workspace" / "site_adapters.pt", map_location="cpu", weights_only=True)
    low, high = ckpt["medad"]["normalizer"]["low"], ckpt["medad"]["normalizer"]["high"]  # BRANCHES order
    assert torch.isfinite(low[1]) and torch.isfinite(high[1])  # pixel_bank fitted (NaN = the [0, 4] fallback)
    # recompute: the same detector, bank and held-out slices
    store = DetectorStore(LabelConfig.from_conf(str(app_dir), {**TEST_CONF, "workspace": str(tmp_path / "w2")}))
    det = store.build(use_site=False)
    x = store.model_inputs(load_source(str(studies_dir / "case_n.nii.gz")), det)
    b = store.bank_index(len(x))
    det.fit_memory_bank(x[torch.as_tensor(b)])
    res = det.predict(x[torch.as_tensor(_held_out_index(len(x), b))])
    assert float(low[1]) == pytest.approx(float(res.bank_maps.min()), rel=1e-5, abs=1e-7)
    assert float(high[1]) == pytest.approx(float(res.bank_maps.max()), rel=1e-5)
    assert report["bank_normalizers"]["pixel_bank"] == pytest.approx([float(low[1]), float(high[1])], abs=1e-6)


@pytest.mark.parametrize("specificity", [0.95, 0.5])
def test_operating_point_is_refit_or_dropped_when_the_bank_changes(studies_dir, app_dir, tmp_path, specificity):
    """An operating point fitted for the old bank is not kept for the new one: refitted on the normal studies when
    there are enough for its specificity (1 for 50 %), dropped with a note otherwise (19 for 95 %)."""
    options = pytest.importorskip("medad.model.options")
    if not hasattr(options, "Calibration"):
        pytest.skip("no operating point in DetectorOptions (issue 11 not merged)")
    import medad
    from medad.checkpoints import save_checkpoint

    det = medad.load_detector(backbone="tiny", device="cpu", precision="fp32")
    det.options.calibration = options.Calibration.fit(np.linspace(0.1, 0.9, 19), np.linspace(0, 1, 50),
                                                      specificity=specificity)
    adapters = tmp_path / "calibrated.pt"
    save_checkpoint(det, adapters)
    conf = {**TEST_CONF, "adapters": str(adapters)}
    with label_client(app_dir, studies_dir, conf, tmp_path) as c:
        assert c.post("/medad/mark_normal?image=case_n").status_code == 200
        r = c.post("/train/anomaly?run_sync=true")
        assert r.status_code == 200, r.text
        cal = r.json()["calibration"]
    ckpt = torch.load(tmp_path / "workspace" / "site_adapters.pt", map_location="cpu", weights_only=True)
    saved = ckpt["medad"]["calibration"]
    if specificity == 0.95:
        assert cal["dropped"] is True and "19 needed" in cal["note"] and saved is None
    else:
        assert cal["refitted"] is True and cal["n_studies"] == 1
        assert saved is not None and len(saved["volume_reference"]) == 1  # fitted on the one normal study
