"""The three front-ends write the same outputs: ``medad score`` (the batch API), the MONAI bundle (ConfigWorkflow)
and the MONAI Label app's infer task score one DICOM series with the same detector (tiny backbone, fp32) through
:func:`medad.inference.write_outputs`, and produce

* the same NIfTI anomaly map (the uncompressed file: header with the affine, and voxel data, byte for byte),
* the same grading (thresholds, voxels per grade, the graded volumes of the SEGs and of the Label app's label map),
* the same DICOM UIDs and PM/SEG pixel data (one UID policy),
* the same provenance fields.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CT = REPO / "sample_data" / "ct_head_phantom" / "dicom"
TOP_K = 5


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """One CT series (the sample phantom, else a generated one) and a tiny fp32 detector saved as a checkpoint,
    with grading thresholds set at the map's 50/80/95th percentiles so that every grade is populated."""
    import medad
    from medad.checkpoints import save_checkpoint
    from medad.inference import VolumeRunner
    from medad.io import load_volume

    root = tmp_path_factory.mktemp("frontends")
    data = root / "data" / "ct" / "dicom"
    if CT.is_dir():
        shutil.copytree(CT, data)
    else:
        from medad.synthetic import make_ct_phantom, write_dicom_series

        hu, _, affine = make_ct_phantom(seed=1, shape=(64, 64, 12))
        write_dicom_series(hu, affine, data, seed=1)
    det = medad.load_detector(backbone="tiny", adapters=None, precision="fp32")
    amap = VolumeRunner(det, top_k=TOP_K).run(load_volume(data)).anomaly_map
    det.options.thresholds = tuple(float(q) for q in np.quantile(amap.numpy(), [0.5, 0.8, 0.95]))
    ckpt = save_checkpoint(det, root / "detector.pt", include_backbone=True)
    return {"root": root, "data": data, "ckpt": ckpt, "thresholds": det.options.thresholds}


@pytest.fixture(scope="module")
def via_score(case):
    """``medad score`` (batch API)."""
    from medad.batch import score

    out = case["root"] / "score"
    summary = score([case["data"]], out, adapters=str(case["ckpt"]), device="cpu", precision="fp32", top_k=TOP_K,
                    overlays=0, dicom_out=True, workers=0, progress=False)
    assert summary.exit_code == 0
    with open(out / "results.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    folder = out / row["output_dir"]
    record = json.loads((folder / "record.json").read_text())
    run = json.loads((out / "run.json").read_text())
    files = {k: out / v for k, v in record["outputs"].items() if k in ("nifti", "pm", "seg")}
    return {"nifti": files["nifti"], "pm": files["pm"], "seg": files["seg"], "grading": record["grading"],
            "provenance": record["provenance"], "run": run, "uids": record["uids"]}


@pytest.fixture(scope="module")
def via_bundle(case):
    """The MONAI bundle's inference config (ConfigWorkflow, in process)."""
    from monai.bundle import ConfigWorkflow

    out = case["root"] / "bundle"
    wf = ConfigWorkflow(config_file=str(REPO / "bundles" / "mri_ct_slice_anomaly_mvfa" / "configs" / "inference.json"),
                        workflow_type="infer", logging_file=False, dataset_dir=str(case["data"].parents[1]),
                        output_dir=str(out), model_path=str(case["ckpt"]), precision="fp32", device="$torch.device('cpu')",
                        top_k=TOP_K, save_dicom=True)
    wf.initialize()
    wf.run()
    wf.finalize()
    folder = out / "ct_dicom"
    return {"nifti": folder / "ct_dicom_anomaly.nii.gz", "pm": folder / "ct_dicom_pm.dcm",
            "seg": folder / "ct_dicom_seg.dcm", "provenance": json.loads((out / "run.json").read_text())}


class _Datastore:
    """Stands in for the app's datastore: keeps the anomaly map the infer task saves under its label tag."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.saved: dict[str, Path] = {}

    def save_label(self, image_id, label_filename, label_tag, label_info):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved[label_tag] = Path(shutil.copy(label_filename, self.folder / Path(label_filename).name))
        return f"{image_id}-{label_tag}"


@pytest.fixture(scope="module")
def via_label(case):
    """The MONAI Label app's ``anomaly`` infer task (the app's own objects, without the HTTP server)."""
    import SimpleITK as sitk

    from medad.label.config import LabelConfig
    from medad.label.infer_task import ANOMALY_MAP_TAG, AnomalyInferTask
    from medad.label.store import DetectorStore

    app = case["root"] / "label_app"
    app.mkdir()
    config = LabelConfig.from_conf(str(app), {"adapters": str(case["ckpt"]), "precision": "fp32", "device": "cpu",
                                              "top_k": str(TOP_K), "write_dicom": "true"})
    datastore = _Datastore(case["root"] / "label_store")
    task = AnomalyInferTask(DetectorStore(config), config, datastore=lambda: datastore)
    label_file, result = task({"image": str(case["data"]), "image_id": "ct", "write_dicom": True,
                               "save_anomaly_map": True})
    labels = sitk.GetArrayFromImage(sitk.ReadImage(label_file)).transpose(2, 1, 0)
    Path(label_file).unlink()
    assert result["outputs"][ANOMALY_MAP_TAG]["saved"] and result["outputs"]["dicom"]["written"], result["outputs"]
    return {"nifti": datastore.saved[ANOMALY_MAP_TAG], "labels": labels, "result": result}


def _nifti_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())  # header (affine as sform/qform) + voxel data, without gzip's framing


def test_same_nifti_map_bytes(via_score, via_bundle, via_label):
    import nibabel as nib

    reference = _nifti_bytes(via_score["nifti"])
    assert _nifti_bytes(via_bundle["nifti"]) == reference
    assert _nifti_bytes(via_label["nifti"]) == reference
    img = nib.load(via_score["nifti"])
    assert img.get_data_dtype() == np.float32 and np.ptp(img.get_fdata()) > 0  # a real map, not a constant


def test_same_grading(case, via_score, via_bundle, via_label):
    import highdicom as hd

    from medad.inference import grade, grading_summary
    from medad.io import load_volume

    grading = via_score["grading"]
    assert grading["thresholds"] == pytest.approx(list(case["thresholds"]))
    assert via_label["result"]["grading"] == grading
    assert all(grading["voxels"][name] > 0 for name in grading["labels"])  # every grade populated
    graded = grade(load_volume(via_score["nifti"])[0], grading["thresholds"])
    assert grading_summary(graded, grading["thresholds"], grading["labels"]) == grading
    np.testing.assert_array_equal(via_label["labels"], graded)  # the label map the viewers get
    segs = [hd.seg.segread(p) for p in (via_score["seg"], via_bundle["seg"])]
    assert segs[0].PixelData == segs[1].PixelData
    for seg in segs:
        assert [d.SegmentLabel for d in seg.SegmentSequence] == grading["labels"]


def test_same_dicom_uids_and_pixels(via_score, via_bundle, via_label):
    import pydicom

    score_pm, bundle_pm = (pydicom.dcmread(p) for p in (via_score["pm"], via_bundle["pm"]))
    score_seg, bundle_seg = (pydicom.dcmread(p) for p in (via_score["seg"], via_bundle["seg"]))
    assert score_pm.FloatPixelData == bundle_pm.FloatPixelData
    assert (score_pm.SeriesInstanceUID, score_pm.SOPInstanceUID) == (bundle_pm.SeriesInstanceUID,
                                                                     bundle_pm.SOPInstanceUID)
    assert (score_seg.SeriesInstanceUID, score_seg.SOPInstanceUID) == (bundle_seg.SeriesInstanceUID,
                                                                       bundle_seg.SOPInstanceUID)
    assert via_score["uids"]["pm_series"] == score_pm.SeriesInstanceUID
    dicom = via_label["result"]["outputs"]["dicom"]
    assert dicom["parametric_map_series_uid"] == score_pm.SeriesInstanceUID
    assert dicom["segmentation_series_uid"] == score_seg.SeriesInstanceUID


def test_same_provenance(via_score, via_bundle, via_label):
    prov = via_score["provenance"]
    assert via_bundle["provenance"] == prov
    assert via_label["result"]["provenance"] == prov
    assert {k: v for k, v in via_score["run"].items() if k in prov} == prov
    assert len(prov["model_sha256"]) == 64 and prov["backbone"] == "tiny" and prov["top_k"] == TOP_K
