"""The medad MONAI Label app through FastAPI's TestClient (no socket): /info, /infer, errors, reviewer loop."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from labelkit import TEST_CONF, label_client

NRRD = {"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8"})}


@pytest.fixture(scope="module")
def client(tmp_path_factory, studies_dir):
    import shutil

    from labelkit import APP_SRC

    tmp = tmp_path_factory.mktemp("headless")
    app = tmp / "medad_label"
    shutil.copytree(APP_SRC, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
    with label_client(app, studies_dir, TEST_CONF, tmp) as c:
        yield c


def test_info_lists_model_with_labels(client):
    r = client.get("/info/")
    assert r.status_code == 200
    info = r.json()
    model = info["models"]["anomaly"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {"anomaly_low": 1, "anomaly_mid": 2, "anomaly_high": 3}
    assert info["labels"] == ["anomaly_low", "anomaly_mid", "anomaly_high"]
    assert model["medad"]["backbone"] == "tiny" and model["medad"]["thresholds"] == [0.3, 0.5, 0.7]
    assert "anomaly" in info["trainers"]
    assert sorted(client.get("/datastore/?output=all").json()["objects"]) == ["case_a", "case_b", "case_n"]


def test_infer_json_scores(client, studies_dir):
    r = client.post("/infer/anomaly?image=case_b&output=json", data={"params": json.dumps({"top_k": 3})})
    assert r.status_code == 200, r.text
    res = r.json()
    n_slices = nib.load(str(studies_dir / "case_b.nii.gz")).shape[2]
    assert len(res["slice_scores"]) == n_slices and res["slice_axis"] == "axial"
    assert len(res["top_slices"]) == 3 and set(res["top_slices"]) <= set(range(n_slices))
    top_scores = [res["slice_scores"][i] for i in res["top_slices"]]
    assert top_scores == sorted(top_scores, reverse=True)
    assert max(res["slice_scores"]) == pytest.approx(top_scores[0])
    assert 0.0 <= res["volume_score"] <= 1.0
    assert res["thresholds"] == [0.3, 0.5, 0.7]
    assert set(res["label_voxels"]) == {"anomaly_low", "anomaly_mid", "anomaly_high"}
    assert res["outputs"]["anomaly_map"] == {"saved": True, "tag": "anomaly_map", "label": "case_b"}
    assert res["outputs"]["dicom"]["written"] is False  # NIfTI input: no DICOM outputs


@pytest.mark.parametrize("case", ["case_a", "case_b"])  # case_a is stored with a +x (non-RAS) axis
def test_infer_nrrd_label_matches_input_geometry_and_map(client, studies_dir, tmp_path, case):
    r = client.post(f"/infer/anomaly?image={case}&output=image", data=NRRD)
    assert r.status_code == 200, r.text
    out = tmp_path / "label.nrrd"
    out.write_bytes(r.content)
    label, ref = sitk.ReadImage(str(out)), sitk.ReadImage(str(studies_dir / f"{case}.nii.gz"))
    assert label.GetPixelID() == sitk.sitkUInt8
    assert label.GetSize() == ref.GetSize()
    np.testing.assert_allclose(label.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(label.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label.GetDirection(), ref.GetDirection(), atol=1e-6)
    # the label is the continuous map (saved under the anomaly_map tag) cut at the thresholds, voxel by voxel
    r = client.get(f"/datastore/label?label={case}&tag=anomaly_map")
    assert r.status_code == 200
    (tmp_path / "map.nii.gz").write_bytes(r.content)
    amap = sitk.ReadImage(str(tmp_path / "map.nii.gz"))
    assert amap.GetSize() == ref.GetSize() and amap.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(amap)
    assert 0.0 <= values.min() and values.max() <= 1.0
    expected = np.digitize(values, [0.3, 0.5, 0.7]).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)


@pytest.mark.parametrize("url,data,status,words", [
    ("/infer/anomaly?image=no_such_case&output=json", None, 404, "not in the datastore"),
    ("/infer/no_such_model?image=case_a&output=json", None, 404, "No model 'no_such_model'"),
    ("/infer/anomaly?output=json", None, 400, "No input given"),
    ("/infer/anomaly?image=case_a&output=json", {"params": "{not json"}, 400, "not valid JSON"),
    ("/infer/anomaly?image=case_a&output=json", {"params": '{"thresholds": [0.9, 0.2, 0.5]}'}, 400,
     "strictly increasing"),
    ("/infer/anomaly?image=case_a&output=json", {"params": '{"thresholds": "high"}'}, 400, "three numbers"),
    ("/infer/anomaly?image=case_a&output=json", {"params": '{"top_k": -2}'}, 400, "top_k"),
    ("/infer/anomaly?image=case_a&output=json", {"params": '{"write_dicom": "maybe"}'}, 400, "write_dicom"),
    ("/infer/anomaly?image=case_a&output=image", {"params": '{"result_extension": ".exe"}'}, 400,
     "result_extension"),
    ("/infer/anomaly?image=case_a&output=image", {"params": '{"result_dtype": "banana"}'}, 400, "result_dtype"),
    ("/infer/anomaly?image=case_a&output=dicom_seg", {"params": '{"label_info": [{"name": "a"}]}'}, 400,
     "needs a DICOMweb datastore"),
])
def test_bad_requests_get_4xx_with_a_clear_message(client, url, data, status, words):
    r = client.post(url, data=data)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_reviewer_loop_adds_normals_to_the_memory_bank(app_dir, studies_dir, tmp_path):
    with label_client(app_dir, studies_dir, TEST_CONF, tmp_path) as c:
        assert c.get("/info/").json()["models"]["anomaly"]["medad"]["memory_bank_tokens"] == 0
        before = c.post("/infer/anomaly?image=case_b&output=json").json()
        r = c.post("/train/anomaly?run_sync=true")
        assert r.status_code == 200 and r.json()["status"] == "nothing to do"

        with open(studies_dir / "case_n.nii.gz", "rb") as f:  # reviewer: "case_n is normal"
            r = c.put("/datastore/label?image=case_n&tag=normal", files={"label": ("case_n.nii.gz", f)})
        assert r.status_code == 200, r.text
        r = c.post("/train/anomaly?run_sync=true")
        assert r.status_code == 200, r.text
        stats = r.json()
        assert stats["status"] == "done" and stats["normal_studies"] == 1
        assert stats["bank_tokens"] == int(TEST_CONF["shots"]) * 17 * 17  # 17x17 patch tokens per slice (no cls)

        site = tmp_path / "workspace" / "site_adapters.pt"
        ckpt = torch.load(site, map_location="cpu", weights_only=True)  # plain tensors only
        assert ckpt["medad"]["memory_bank"]["seg"].shape[1] == stats["bank_tokens"]
        assert ckpt["medad"]["provenance"]["site_normals"] == 1
        assert "case_n" not in json.dumps(ckpt["medad"]["provenance"])  # no study ids in the checkpoint

        info = c.get("/info/").json()["models"]["anomaly"]["medad"]
        assert info["memory_bank_tokens"] == stats["bank_tokens"] and info["site_checkpoint"] is True
        after = c.post("/infer/anomaly?image=case_b&output=json").json()
        assert after["slice_scores"] != before["slice_scores"]  # the infer task uses the grown bank

        # idempotent: training again rebuilds from the configured adapters, it does not add the study twice
        assert c.post("/train/anomaly?run_sync=true").json()["bank_tokens"] == stats["bank_tokens"]

    # a restart with the same options uses the grown bank; with other options the site checkpoint is ignored
    from medad.label.config import LabelConfig
    from medad.label.store import DetectorStore

    ws = {"workspace": str(tmp_path / "workspace")}
    same = DetectorStore(LabelConfig.from_conf(str(app_dir), {**TEST_CONF, **ws}))
    assert len(same.get()[0].memory_bank) == stats["bank_tokens"] and same.info()["site_checkpoint"] is True
    other = DetectorStore(LabelConfig.from_conf(str(app_dir), {**TEST_CONF, **ws, "shots": "3"}))
    assert other.get()[0].memory_bank is None and other.info()["site_checkpoint"] is False


def test_conf_errors_name_the_option(tmp_path):
    from pathlib import Path

    from medad.label.config import ConfigError, LabelConfig

    with pytest.raises(ConfigError, match="thresholds"):
        LabelConfig.from_conf(str(tmp_path), {"thresholds": "0.9,0.5,0.7"})
    with pytest.raises(ConfigError, match="unknown option"):
        LabelConfig.from_conf(str(tmp_path), {"treshold": "0.5"})
    with pytest.raises(ConfigError, match="does not exist"):
        LabelConfig.from_conf(str(tmp_path), {"adapters": str(tmp_path / "missing.pt")})
    cfg = LabelConfig.from_conf(str(tmp_path), {"adapters": "demo", "shots": "8", "runner.batch_size": "4",
                                                "zoo_source": "local"})
    assert cfg.adapters == "demo" and cfg.shots == 8 and cfg.runner_options == {"batch_size": 4}
    assert cfg.backbone is None  # the adapters checkpoint decides (medad.load_detector)
    assert cfg.site_checkpoint == str(tmp_path / "workspace" / "site_adapters.pt")  # never in the app or studies
    studies = tmp_path / "studies"
    cfg = LabelConfig.from_conf(str(tmp_path), {}, studies=str(studies))
    assert cfg.adapters == "demo"  # the default without adapters/weights/backbone, as medad score
    assert Path(cfg.workspace).parent.name == "label" and Path(cfg.workspace).name.startswith("studies-")
    assert not Path(cfg.workspace).is_relative_to(studies)
    assert LabelConfig.from_conf(str(tmp_path), {"adapters": "none", "backbone": "tiny"}).adapters is None
    with pytest.raises(ConfigError, match="max_upload_mb"):
        LabelConfig.from_conf(str(tmp_path), {"max_upload_mb": "-3"})


def test_support_studies_build_the_memory_bank_at_start(tmp_path, studies_dir):
    from medad.label.config import LabelConfig
    from pathlib import Path

    from medad.io import find_volumes
    from medad.label.store import DetectorStore

    assert [Path(v["image"]).name for v in find_volumes(studies_dir)] == ["case_a.nii.gz", "case_b.nii.gz",
                                                                          "case_n.nii.gz"]
    cfg = LabelConfig.from_conf(str(tmp_path), {**TEST_CONF, "support": str(studies_dir / "case_n.nii.gz")})
    det, runner = DetectorStore(cfg).get()
    assert len(det.memory_bank) == int(TEST_CONF["shots"]) * 17 * 17
    assert runner.top_k == cfg.top_k and det.options.thresholds == (0.3, 0.5, 0.7)
    cfg = LabelConfig.from_conf(str(tmp_path), {**TEST_CONF, "support": str(studies_dir), "shots": "1"})
    assert len(DetectorStore(cfg).get()[0].memory_bank) == 3 * 17 * 17  # one slice of each of the 3 studies


def test_generated_minimal_app_serves_the_same_model(tmp_path, studies_dir):
    from medad.label.app import write_minimal_app

    app = write_minimal_app(tmp_path / "label_app")  # what `medad label` uses without the repository's apps/
    with label_client(app, studies_dir, TEST_CONF, tmp_path) as c:
        assert c.get("/info/").json()["models"]["anomaly"]["dimension"] == 3
        r = c.post("/infer/anomaly?image=case_b&output=json")
        assert r.status_code == 200 and len(r.json()["slice_scores"]) == 12
        assert "anomaly" in c.get("/info/").json()["trainers"]
