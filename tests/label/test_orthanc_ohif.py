"""Integration with a real Orthanc (DICOMweb datastore) and a real browser (headless Chromium on the OHIF page).

Needs the Debian packages ``orthanc orthanc-dicomweb chromium`` (skipped without them). Everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests

from labelkit import APP_SRC, REPO, TEST_CONF, live_server, series_modalities, upload

pytestmark = pytest.mark.orthanc

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "tests" / "artifacts"
SHAPE = (64, 56, 10)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory) -> dict:
    """A synthetic CT head written as a 10-slice DICOM series (deterministic UIDs)."""
    from medad.synthetic.dicom_series import series_uids, write_dicom_series
    from medad.synthetic.phantoms import default_affine, make_ct_phantom

    hu, _, affine = make_ct_phantom(11, shape=SHAPE, n_lesions=2, affine=default_affine(SHAPE, (3.5, 3.5, 6.0)))
    files = write_dicom_series(hu, affine, tmp_path_factory.mktemp("ct_series"), seed=11,
                               study_description="medad OHIF test")
    return {"files": files, **series_uids(11)}


@pytest.fixture(scope="module")
def server(tmp_path_factory, pacs, ct_series):
    """Orthanc holding the CT series + the medad app serving it (DICOMweb datastore) on a live socket."""
    assert upload(pacs, ct_series["files"])
    tmp = tmp_path_factory.mktemp("orthanc_app")
    app = tmp / "medad_label"
    shutil.copytree(APP_SRC, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
    with live_server(app, pacs.dicomweb, {**TEST_CONF, "empty_final_is_normal": "true"}, tmp) as url:
        yield url


def _qido_series(pacs, **filters) -> list[dict]:
    r = requests.get(f"{pacs.dicomweb}/series", params=filters, headers={"Accept": "application/dicom+json"},
                     timeout=30)
    r.raise_for_status()
    return r.json() if r.content else []


def test_infer_on_orthanc_series_stores_parametric_map_and_seg(server, pacs, ct_series, tmp_path):
    series_uid = ct_series["series"]
    assert series_modalities(pacs) == ["CT"]
    # first access to the series is the inference itself (no "Next Sample" before): the series is fetched,
    # converted, and the DICOM files found for the Parametric Map / SEG
    r = requests.post(f"{server}/infer/anomaly", params={"image": series_uid, "output": "json"}, timeout=300)
    assert r.status_code == 200, r.text
    res = r.json()
    dicom = res["outputs"]["dicom"]
    assert dicom["written"] is True and dicom["stowed"] is True, dicom
    assert len(res["slice_scores"]) == SHAPE[2]
    assert requests.post(f"{server}/activelearning/random", json={}, timeout=60).json()["id"] == series_uid

    # QIDO-RS on the PACS: the Parametric Map (Modality OT in highdicom) and the SEG are there
    assert series_modalities(pacs) == ["CT", "OT", "SEG"]
    seg = _qido_series(pacs, SeriesInstanceUID=dicom["segmentation_series_uid"])
    pm = _qido_series(pacs, SeriesInstanceUID=dicom["parametric_map_series_uid"])
    assert len(seg) == 1 and len(pm) == 1
    assert seg[0]["0020000D"]["Value"][0] == ct_series["study"]  # same study as the source

    # WADO-RS metadata: the SEG references the source series; the PM has one float frame per slice
    study = ct_series["study"]
    seg_meta = requests.get(f"{pacs.dicomweb}/studies/{study}/series/{dicom['segmentation_series_uid']}/metadata",
                            timeout=30).json()[0]
    seg_ds = pydicom.Dataset.from_json(seg_meta)
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert [s.SegmentLabel for s in seg_ds.SegmentSequence] == ["anomaly_low", "anomaly_mid", "anomaly_high"]
    pm_meta = pydicom.Dataset.from_json(requests.get(
        f"{pacs.dicomweb}/studies/{study}/series/{dicom['parametric_map_series_uid']}/metadata",
        timeout=30).json()[0])
    assert pm_meta.SOPClassUID == pydicom.uid.ParametricMapStorage
    assert int(pm_meta.NumberOfFrames) == SHAPE[2]
    assert (pm_meta.Rows, pm_meta.Columns) == (SHAPE[1], SHAPE[0])

    # output=dicom_seg (MONAI Label converts the label with dcmqi, not installed here): SEG written with highdicom
    r = requests.post(f"{server}/infer/anomaly", params={"image": series_uid, "output": "dicom_seg"},
                      data={"params": json.dumps({"write_dicom": False, "thresholds": [0.05, 0.1, 0.15],
                                                  "label_info": [{"name": "low"}, {"name": "mid"}, {"name": "high"}]})},
                      timeout=300)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text[:500]
    (tmp_path / "seg.dcm").write_bytes(r.content)
    seg_file = pydicom.dcmread(tmp_path / "seg.dcm")
    assert seg_file.SOPClassUID == pydicom.uid.SegmentationStorage
    assert {s.SegmentLabel for s in seg_file.SegmentSequence} <= {"low", "mid", "high"}
    assert seg_file.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid

    # the graded label for the viewer: uint8 .nrrd on the grid of the series (as MONAI Label converted it)
    r = requests.post(f"{server}/infer/anomaly", params={"image": series_uid, "output": "image"},
                      data={"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8",
                                                  "write_dicom": False})}, timeout=300)
    assert r.status_code == 200
    import SimpleITK as sitk

    out = tmp_path / "label.nrrd"
    out.write_bytes(r.content)
    label = sitk.ReadImage(str(out))
    assert label.GetSize() == SHAPE and label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= {0, 1, 2, 3}


def test_submitted_labels_become_seg_without_dcmqi_and_empty_ones_mark_normal(server, pacs, ct_series, tmp_path):
    import nibabel as nib

    assert shutil.which("itkimage2segimage") is None  # MONAI Label alone could not convert labels to SEG here
    uid = ct_series["series"]
    r = requests.get(f"{server}/datastore/image", params={"image": uid}, timeout=60)  # what a viewer loads
    assert r.status_code == 200
    (tmp_path / "image.nii.gz").write_bytes(r.content)
    image = nib.load(str(tmp_path / "image.nii.gz"))
    label = np.zeros(image.shape, dtype=np.uint8)
    label[20:30, 20:30, 3:6] = 1
    label[25:28, 25:28, 4] = 2
    n_seg = series_modalities(pacs).count("SEG")

    def submit(array, info):
        nib.save(nib.Nifti1Image(array, image.affine), str(tmp_path / "label.nii.gz"))
        with open(tmp_path / "label.nii.gz", "rb") as f:
            return requests.put(f"{server}/datastore/label", params={"image": uid, "tag": "final"},
                                data={"params": json.dumps({"label_info": info})},
                                files={"label": ("label.nii.gz", f)}, timeout=120)

    r = submit(label, [{"name": "lesion", "idx": 1}, {"name": "edema", "idx": 2}])  # as 3D Slicer submits
    assert r.status_code == 200, r.text
    assert series_modalities(pacs).count("SEG") == n_seg + 1
    reviewed = _qido_series(pacs, Modality="SEG", SeriesNumber="903")  # medad's series number for reviewed labels
    assert len(reviewed) == 1
    meta = pydicom.Dataset.from_json(requests.get(
        f"{pacs.dicomweb}/studies/{ct_series['study']}/series/{reviewed[0]['0020000E']['Value'][0]}/metadata",
        timeout=30).json()[0])
    assert [s.SegmentLabel for s in meta.SegmentSequence] == ["lesion", "edema"]
    assert meta.ReferencedSeriesSequence[0].SeriesInstanceUID == uid

    # the reviewer clears the segments and submits: an empty label marks the study normal (no new SEG)
    assert submit(np.zeros(image.shape, dtype=np.uint8), []).status_code == 200
    assert series_modalities(pacs).count("SEG") == n_seg + 1
    before = _infer_dicom(server, uid)
    assert _infer_dicom(server, uid) == before  # same model, same thresholds: the same instances again
    r = requests.post(f"{server}/train/anomaly", params={"run_sync": "true"}, timeout=300)
    assert r.status_code == 200 and r.json()["normal_studies"] == 1, r.text
    after = _infer_dicom(server, uid)  # grown memory bank: a new PM/SEG series, stored next to the old one
    assert after["stowed"] and after["parametric_map_series_uid"] != before["parametric_map_series_uid"]
    assert series_modalities(pacs).count("OT") == 2


def _infer_dicom(server: str, series_uid: str) -> dict:
    r = requests.post(f"{server}/infer/anomaly", params={"image": series_uid, "output": "json"}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["outputs"]["dicom"]


def _chromium(*args: str, profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,800",
           "--virtual-time-budget=20000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_ohif_study_list_in_headless_chromium(server, pacs, ct_series, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Chromium is not installed: apt-get install -y chromium")
    url = f"{server}/ohif/"
    assert requests.get(url, timeout=30).status_code == 200
    # the OHIF study list is filled by a QIDO request through the server's DICOMweb proxy
    studies = requests.get(f"{server}/proxy/dicom/qido/studies", timeout=30).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [ct_series["study"]]

    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile_dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the study list row of the phantom study (PatientName PHANTOM^SYNTHETIC, PatientID ANON-PHANTOM, CT)
    assert "PHANTOM, SYNTHETIC" in dom.stdout and "ANON-PHANTOM" in dom.stdout, dom.stdout[-3000:]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ohif_study_list.png"
    shot.unlink(missing_ok=True)
    r = _chromium(f"--screenshot={shot}", url, profile=tmp_path / "profile_shot")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (800, 1280)
    assert img.std() > 10  # not a blank page
