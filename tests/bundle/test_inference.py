"""Inference config: ConfigWorkflow (in-process) and the CLI (subprocess) on a CT DICOM series and an MR NIfTI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from .conftest import BUNDLE, CONFIGS, REPO, SAMPLE, demo_available, model_overrides


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def inference_run(dataset_dir, tmp_path_factory):
    from monai.bundle import ConfigWorkflow

    out = tmp_path_factory.mktemp("infer_out")
    wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), workflow_type="infer", logging_file=False,
                        dataset_dir=str(dataset_dir), output_dir=str(out), slice_batch_size=16, save_dicom=True,
                        **model_overrides())
    wf.initialize()
    missing = wf.check_properties()
    wf.run()
    wf.finalize()
    return wf, out, missing


def test_workflow_properties(inference_run):
    wf, _, missing = inference_run
    assert missing == []  # every InferProperties/MetaProperties id is present
    assert wf.parser.get_parsed_content("bundle_root") == str(BUNDLE)  # the zoo's override of the config's "."


def test_outputs_and_csv(inference_run, dataset_dir):
    from medad.inference import RESULTS_COLUMNS

    _, out, _ = inference_run
    with open(out / "scores.csv", newline="") as fh:
        assert tuple(csv.DictReader(fh).fieldnames) == RESULTS_COLUMNS  # medad score's results.csv columns
    rows = {r["output_dir"]: r for r in _read_csv(out / "scores.csv")}
    # one row per volume; the mask next to the MR image is excluded by the default "*mask*" pattern
    assert set(rows) == {"ct_head_dicom", "mr_flair"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")) == [
        "ct_head_dicom/ct_head_dicom_anomaly.nii.gz", "mr_flair/mr_flair_anomaly.nii.gz"]
    assert rows["ct_head_dicom"]["modality"] == "CT" and rows["ct_head_dicom"]["series_key"] == \
        rows["ct_head_dicom"]["series_uid"] != ""
    assert rows["mr_flair"]["series_key"] == "mr_flair" and rows["mr_flair"]["series_uid"] == ""  # never a path
    for name, r in rows.items():
        assert r["status"] == "ok" and r["error"] == ""
        n = int(r["slices"])
        top = [int(i) for i in r["top_slices"].split()]
        top_scores = [float(s) for s in r["top_slice_scores"].split()]
        assert len(top) == 5 and len(set(top)) == 5 and all(0 <= i < n for i in top)
        assert top_scores == sorted(top_scores, reverse=True)
        # default volume score: mean of the top-5 slice scores (written with 4 decimals)
        assert float(r["volume_score"]) == pytest.approx(np.mean(top_scores), abs=1e-4)
        data = nib.load(out / name / f"{name}_anomaly.nii.gz").get_fdata(dtype=np.float32)
        assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0 and data.std() > 0


def test_run_json_holds_the_provenance(inference_run):
    import json

    from medad.inference import provenance

    wf, out, _ = inference_run
    prov = json.loads((out / "run.json").read_text())
    det = wf.parser.get_parsed_content("network_def").detector
    runner = wf.parser.get_parsed_content("inferer").runner(wf.parser.get_parsed_content("network_def"))
    assert prov == provenance(det, runner)
    assert prov["top_k"] == 5 and prov["axis"] == "axial" and len(prov["model_sha256"]) == 64


def test_dicom_parametric_map_and_seg(inference_run, dataset_dir):
    """``--save_dicom true``: a float PM and a graded BINARY SEG on the CT series' frame of reference."""
    import highdicom as hd
    import pydicom

    from medad.inference import grade

    _, out, _ = inference_run
    row = {r["output_dir"]: r for r in _read_csv(out / "scores.csv")}["ct_head_dicom"]
    folder = out / "ct_head_dicom"
    assert sorted(p.name for p in folder.iterdir()) == ["ct_head_dicom_anomaly.json", "ct_head_dicom_anomaly.nii.gz",
                                                        "ct_head_dicom_pm.dcm", "ct_head_dicom_seg.dcm"]
    sidecar = json.loads((folder / "ct_head_dicom_anomaly.json").read_text())  # provenance next to the NIfTI map
    assert len(sidecar["provenance"]["model_sha256"]) == 64 and sidecar["grading"]
    import medad  # scores.csv carries the same provenance columns as medad score's results.csv

    assert row["medad_version"] == medad.__version__ and row["backbone_sha256"] == sidecar["provenance"]["backbone_sha256"]
    src = pydicom.dcmread(next((dataset_dir / "ct_head" / "dicom").iterdir()), stop_before_pixels=True)
    pm = pydicom.dcmread(folder / "ct_head_dicom_pm.dcm")
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and int(pm.NumberOfFrames) == int(row["slices"])
    assert pm.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert pm.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID == row["series_uid"]
    seg = hd.seg.segread(folder / "ct_head_dicom_seg.dcm")
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["anomaly_low", "anomaly_mid", "anomaly_high"]
    # the SEG holds the map graded with the model's thresholds
    from medad.io import load_volume

    amap = load_volume(folder / "ct_head_dicom_anomaly.nii.gz")
    thresholds = _wf_thresholds(inference_run)
    labels = seg.get_volume(combine_segments=True).array
    assert np.bincount(labels.ravel(), minlength=4).tolist() == np.bincount(grade(amap[0], thresholds).ravel(),
                                                                            minlength=4).tolist()
    assert not list((out / "mr_flair").glob("*.dcm"))  # NIfTI source: no DICOM objects


def _wf_thresholds(inference_run):
    wf = inference_run[0]
    return tuple(wf.parser.get_parsed_content("network_def").detector.options.thresholds)


def test_geometry_matches_sources(inference_run, dataset_dir):
    """The maps sit on the source voxel grid: compared with SimpleITK's reading of the DICOM series and the NIfTI."""
    _, out, _ = inference_run
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dataset_dir / "ct_head" / "dicom")))
    pairs = [(reader.Execute(), sitk.ReadImage(str(out / "ct_head_dicom" / "ct_head_dicom_anomaly.nii.gz"))),
             (sitk.ReadImage(str(dataset_dir / "mr" / "flair.nii.gz")),
              sitk.ReadImage(str(out / "mr_flair" / "mr_flair_anomaly.nii.gz")))]
    for src, amap in pairs:
        assert amap.GetSize() == src.GetSize()
        np.testing.assert_allclose(amap.GetOrigin(), src.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(amap.GetSpacing(), src.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(amap.GetDirection(), src.GetDirection(), atol=1e-5)


@pytest.mark.skipif(not (demo_available() and (SAMPLE / "ct_head_phantom" / "lesion_mask.nii.gz").is_file()),
                    reason="needs the demo model and the committed sample data with its lesion masks")
def test_demo_maps_localise_the_sample_lesions(inference_run):
    """End to end through the bundle: the maps line up with the phantoms' ground-truth lesion masks (a flipped or
    shifted map would score near chance). The demo model reached pixel AUROC 0.87 (CT) and 0.80 (MR) when written."""
    from sklearn.metrics import roc_auc_score

    _, out, _ = inference_run
    for name, mask in [("ct_head_dicom", "ct_head_phantom"), ("mr_flair", "mr_flair_phantom")]:
        amap, gt = nib.load(out / name / f"{name}_anomaly.nii.gz"), nib.load(SAMPLE / mask / "lesion_mask.nii.gz")
        np.testing.assert_allclose(amap.affine, gt.affine, atol=1e-4)
        assert roc_auc_score(gt.get_fdata().ravel() > 0, amap.get_fdata().ravel()) > 0.7, name


def test_bundle_is_wiring_over_volume_runner(inference_run, dataset_dir):
    """The bundle's map and scores equal a direct ``VolumeRunner`` call on the same volume (no extra math)."""
    import medad
    from medad.inference import VolumeRunner
    from medad.io import load_volume

    _, out, _ = inference_run
    kw = model_overrides()
    det = medad.load_detector(backbone=kw.get("backbone"), adapters=kw.get("adapters", "demo"))
    res = VolumeRunner(det, batch_size=7).run(load_volume(dataset_dir / "mr" / "flair.nii.gz"))
    saved = nib.load(out / "mr_flair" / "mr_flair_anomaly.nii.gz").get_fdata(dtype=np.float32)
    np.testing.assert_allclose(saved, res.anomaly_map[0].numpy(), atol=1e-5)
    row = {r["output_dir"]: r for r in _read_csv(out / "scores.csv")}["mr_flair"]
    assert float(row["volume_score"]) == pytest.approx(res.volume_score, abs=1e-6)
    assert [int(i) for i in row["top_slices"].split()] == res.top_slices


@pytest.mark.skipif(demo_available(), reason="covered by test_readme.py (the README commands run the CLI)")
def test_cli_from_repo_root(sample_volumes, tmp_path):
    """``python -m monai.bundle run`` as a user types it, from the repository root, on one NIfTI file."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS.relative_to(REPO) / "inference.json"),
           "--datalist", f"$medad.io.find_volumes(['{sample_volumes['mr_nifti']}'])", "--output_dir", str(out)]
    for k, v in model_overrides().items():
        cmd += [f"--{k}", "$None" if v is None else v]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _read_csv(out / "scores.csv")
    assert [r["output_dir"] for r in rows] == ["image"]
    img = nib.load(out / "image" / "image_anomaly.nii.gz")
    np.testing.assert_allclose(img.affine, nib.load(sample_volumes["mr_nifti"]).affine, atol=1e-4)
    assert "volume score" in proc.stdout  # logging.conf routes medad's INFO lines to stdout


def test_find_volumes_errors(tmp_path):
    from medad.io import find_volumes

    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_volumes(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no loadable volume"):
        find_volumes(tmp_path)


def test_find_volumes_names_several_series_in_one_folder(tmp_path):
    """Two series in one folder are two items (never stacked), named by folder + SeriesNumber."""
    import medad.bundle as mb
    from medad.io import find_volumes
    from medad.synthetic import write_dicom_series
    from medad.synthetic.phantoms import default_affine

    hu = np.random.default_rng(0).integers(-1000, 1000, size=(24, 24, 4)).astype(np.float32)
    aff = default_affine(hu.shape, (1.0, 1.0, 3.0))
    write_dicom_series(hu, aff, tmp_path / "study", seed=3, series_number=2, file_prefix="A")
    write_dicom_series(hu[:, :, :3], aff, tmp_path / "study", seed=4, series_number=5, file_prefix="B")
    items = sorted(find_volumes(tmp_path), key=lambda i: i["name"])
    assert [i["name"] for i in items] == ["study_s2", "study_s5"]
    vols = [mb.LoadVolumed("image")(i)["image"] for i in items]
    assert [tuple(v.shape) for v in vols] == [(1, 24, 24, 4), (1, 24, 24, 3)]
    assert all(v.meta["output_name"] == i["name"] for v, i in zip(vols, items))
    assert "series" not in mb.LoadVolumed("image")(items[0])  # removed so that batches collate


def test_inferer_rejects_multichannel():
    import medad.bundle as mb

    with pytest.raises(ValueError, match=r"\[B, 1, X, Y, Z\]"):
        mb.VolumeInferer()(torch.zeros(1, 2, 4, 4, 4), torch.nn.Identity())
