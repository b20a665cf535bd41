"""``medad label`` as a real server process on 127.0.0.1, driven through ``monailabel.client.MONAILabelClient`` (the
client 3D Slicer's MONAILabel module uses) and plain HTTP: path traversal, malformed requests, uploads, the datastore's
hygiene, and responsiveness during an inference.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from labelkit import TEST_CONF, medad_label_server, tree_snapshot, write_phantom_nifti

BIG = (256, 256, 160)  # the volume /info must stay responsive during


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Studies (3 phantoms, a mask next to case_b, a 256x256x160 volume), a sibling 'outside' folder with a file, and
    the server (tiny test model, 1 MiB upload limit) with its workspace under the module's tmp folder."""
    root = tmp_path_factory.mktemp("client")
    studies = root / "studies"
    studies.mkdir()
    write_phantom_nifti(studies / "case_a.nii.gz", seed=1, flip_x=True)
    write_phantom_nifti(studies / "case_b.nii.gz", seed=2)
    write_phantom_nifti(studies / "case_n.nii.gz", seed=3, n_lesions=0)
    ref = nib.load(str(studies / "case_b.nii.gz"))
    nib.save(nib.Nifti1Image((np.asarray(ref.dataobj) > 60).astype(np.uint8), ref.affine),
             str(studies / "case_b_mask.nii.gz"))
    write_phantom_nifti(studies / "big.nii.gz", seed=4, shape=BIG)
    outside = root / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("must survive")
    conf = {**TEST_CONF, "max_upload_mb": "1"}
    with medad_label_server(studies, root / "workspace", conf, root / "run") as url:
        yield {"url": url, "root": root, "studies": studies, "outside": outside, "workspace": root / "workspace",
               "client": MONAILabelClient(url, tmpdir=str(root / "client_tmp"))}


def _status(exc: MONAILabelClientException) -> int:
    return int(str(exc.msg).split("Status: ")[1].split(";")[0])


def test_datastore_lists_studies_not_masks_and_writes_nothing_into_the_studies_folder(site):
    ds = site["client"].datastore()
    assert sorted(ds["objects"]) == ["big", "case_a", "case_b", "case_n"]  # case_b_mask.nii.gz is not a study
    assert ds["objects"]["case_b"]["image"]["info"]["reference_mask"] == "case_b_mask.nii.gz"
    names = sorted(os.listdir(site["studies"]))
    assert names == ["big.nii.gz", "case_a.nii.gz", "case_b.nii.gz", "case_b_mask.nii.gz", "case_n.nii.gz"]
    store = site["workspace"] / "datastore"
    assert (store / "datastore_v2.json").is_file() and (store / ".lock").exists() and (store / "labels").is_dir()


def test_traversal_is_refused_and_nothing_is_created_or_removed_outside(site):
    c, url, root = site["client"], site["url"], site["root"]
    before = tree_snapshot(root, skip=("workspace", "run", "client_tmp"))
    study = str(site["studies"] / "case_a.nii.gz")
    attempts = {
        "upload ../x": lambda: c.upload_image(study, "../x"),
        "upload ../../outside/x": lambda: c.upload_image(study, "../../outside/x"),
        "label tag ../../x": lambda: c.save_label("case_a", study, tag="../../x"),
        "label image ../case_a": lambda: c.save_label("../case_a", study),
        "infer abs path": lambda: c.infer("anomaly", study, {}),
        "infer /etc": lambda: c.infer("anomaly", "/etc", {}),
        "infer ../studies/case_a": lambda: c.infer("anomaly", "../studies/case_a", {}),
        "download label tag ../": lambda: c.download_label("case_a", "../../outside/keep"),
    }
    for name, call in attempts.items():
        with pytest.raises(MONAILabelClientException) as e:
            call()
        assert _status(e.value) == 400, (name, e.value.msg)
        assert "is not allowed" in e.value.msg, (name, e.value.msg)
    for path in ("/datastore/image?id=../outside/keep.txt", "/datastore/?id=../x",
                 "/datastore/label?id=case_a&tag=../../outside"):
        r = requests.delete(url + path, timeout=30)
        assert r.status_code == 400 and "is not allowed" in r.json()["detail"], (path, r.text)
    r = requests.get(f"{url}/datastore/image", params={"image": "../outside/keep.txt"}, timeout=30)
    assert r.status_code == 400
    # deleting a study of the user's folder is refused (the server only reads that folder)
    r = requests.delete(f"{url}/datastore/image", params={"id": "case_a"}, timeout=30)
    assert r.status_code == 403 and "does not modify" in r.json()["detail"]
    assert tree_snapshot(root, skip=("workspace", "run", "client_tmp")) == before
    assert (site["outside"] / "keep.txt").read_text() == "must survive"


def test_corrupt_uploads_and_malformed_params_get_4xx(site, tmp_path):
    c, url = site["client"], site["url"]
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(b"definitely not a nifti")
    big = tmp_path / "huge.nii.gz"
    big.write_bytes(os.urandom(3 << 20))  # 3 MiB > --conf max_upload_mb 1
    cases = [("txt study", lambda: c.upload_image(str(text), "notes"), 415, "not a supported file type"),
             ("fake nifti", lambda: c.upload_image(str(fake), "fake"), 415, "not a readable"),
             ("too large", lambda: c.upload_image(str(big), "huge"), 413, "at most 1 MiB"),
             ("infer on a non-image", lambda: c.infer("anomaly", "x", {}, file=str(fake)), 415, "not a readable"),
             ("infer on a txt", lambda: c.infer("anomaly", "x", {}, file=str(text)), 415, "not a supported"),
             ("label not an image", lambda: c.save_label("case_a", str(fake), tag="final"), 415, "not a readable"),
             ("unknown model", lambda: c.infer("no_such_model", "case_a", {}), 404, "No model"),
             ("unknown image", lambda: c.infer("anomaly", "no_such_case", {}), 404, "not in the datastore"),
             ("unknown strategy", lambda: c.next_sample("no_such_strategy", {}), 404, "No active-learning strategy"),
             ("unknown trainer", lambda: c.train_start("no_such_trainer", {}), 404, "No trainer")]
    for name, call, status, words in cases:
        with pytest.raises(MONAILabelClientException) as e:
            call()
        assert _status(e.value) == status and words in e.value.msg, (name, e.value.msg)
    for path, data in [("/infer/anomaly?image=case_a&output=json", {"params": "[1,2,3]"}),
                       ("/infer/anomaly?image=case_a&output=json", {"params": "{not json"}),
                       ("/infer/anomaly?image=case_a&output=bogus", None)]:
        r = requests.post(url + path, data=data, timeout=60)
        assert r.status_code == 400, (path, r.text)
    with open(site["studies"] / "case_a.nii.gz", "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": "case_a", "tag": "final"},
                         data={"params": "[1,2,3]"}, files={"label": ("l.nii.gz", f)}, timeout=60)
    assert r.status_code == 400 and "JSON object" in r.json()["detail"]
    assert requests.post(f"{url}/scoring/no_such_method", timeout=30).status_code == 404

    def chunked_body(boundary="medadBOUNDARY"):  # no Content-Length: the limit is enforced while reading
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n'
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(24):
            yield b"0" * (128 << 10)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = requests.put(f"{url}/datastore/image", params={"image": "chunked"}, data=chunked_body(), timeout=60,
                     headers={"Content-Type": "multipart/form-data; boundary=medadBOUNDARY"})
    assert r.status_code == 413 and "at most 1 MiB" in r.json()["detail"], r.text
    assert "notes" not in c.datastore()["objects"] and "fake" not in c.datastore()["objects"]


def test_upload_and_delete_an_uploaded_study(site):
    c, url = site["client"], site["url"]
    assert c.upload_image(str(site["studies"] / "case_n.nii.gz"), "uploaded_n")["image"] == "uploaded_n"
    assert (site["workspace"] / "datastore" / "uploads" / "uploaded_n.nii.gz").is_file()
    assert "uploaded_n.nii.gz" not in os.listdir(site["studies"])
    _, res = c.infer("anomaly", "uploaded_n", {})
    assert len(res["slice_scores"]) == 12
    assert requests.delete(f"{url}/datastore/image", params={"id": "uploaded_n"}, timeout=30).status_code == 200
    assert "uploaded_n" not in c.datastore()["objects"]


def test_result_has_colours_legend_1_based_slices_and_a_seg_nrrd(site, tmp_path):
    import SimpleITK as sitk

    c = site["client"]
    info = c.info()
    assert info["label_colors"] == {"anomaly_low": [255, 215, 0], "anomaly_mid": [255, 140, 0],
                                    "anomaly_high": [220, 20, 20]}
    assert [g["from"] for g in info["models"]["anomaly"]["legend"]["grades"]] == [0.3, 0.5, 0.7]
    assert "mark_normal" in info["models"] and info["labels"] == ["anomaly_low", "anomaly_mid", "anomaly_high"]
    label, res = c.infer("anomaly", "case_b", {"result_extension": ".nrrd", "result_dtype": "uint8"})
    assert label.endswith(".seg.nrrd")  # 3D Slicer loads it with these names and colours (.seg.nrrd setting)
    img = sitk.ReadImage(label)
    assert img.GetMetaData("Segment2_Name") == "anomaly_high" and img.GetMetaData("Segment2_LabelValue") == "3"
    assert img.GetMetaData("Segment0_Color") == "1 0.843137 0"  # GRADE_COLORS gold
    assert res["top_slice_numbers"] == [k + 1 for k in res["top_slices"]]
    assert f"slice {res['top_slices'][0] + 1} of 12" in res["summary"]
    assert res["legend"]["grades"][0]["color"] == "#ffd700"
    assert res["viewer"]["slicer_overlay"].startswith("exec(") and "image=case_b" in res["viewer"]["slicer_overlay"]
    r = requests.get(f"{site['url']}/medad/slicer/overlay.py", params={"image": "case_b"}, timeout=30)
    assert r.status_code == 200
    compile(r.text, "overlay.py", "exec")  # valid Python for Slicer's console
    table = requests.get(f"{site['url']}/medad/colormap.ctbl", timeout=30).text.splitlines()
    rows = [line.split() for line in table if not line.startswith("#")]
    assert len(rows) == 256 and rows[0][-1] == "0" and rows[-1][2:] == ["220", "20", "20", "255"]


def test_info_datastore_and_a_second_model_answer_within_2s_during_an_inference(site):
    c, url = site["client"], site["url"]
    done: dict = {}

    def run():
        t = time.monotonic()
        try:
            done["result"] = c.infer("anomaly", "big", {"result_extension": ".nrrd", "result_dtype": "uint8"})
        except Exception as e:  # noqa: BLE001
            done["error"] = e
        done["seconds"] = time.monotonic() - t

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while not requests.get(f"{url}/medad/queue", timeout=30).json()["running"]:
        assert time.monotonic() < deadline and worker.is_alive(), done
        time.sleep(0.05)
    timings, progress = [], []
    while worker.is_alive() and len(timings) < 400:
        for path in ("/info/", "/datastore/?output=all"):
            t = time.monotonic()
            r = requests.get(url + path, timeout=30)
            timings.append((path, time.monotonic() - t, r.status_code))
        queue = requests.get(f"{url}/medad/queue", timeout=30).json()
        progress += [(j["slices_total"], j["slices_done"]) for j in queue["running"] if j["image"] == "big"]
        if progress and 0 < progress[-1][1] < BIG[2] and "second_model" not in done:  # another model meanwhile
            t = time.monotonic()
            r = requests.post(f"{url}/infer/mark_normal", params={"image": "case_n", "output": "json"}, timeout=60)
            done["second_model"] = (time.monotonic() - t, r.status_code, worker.is_alive())
        time.sleep(0.1)
    worker.join(600)
    assert "error" not in done, done.get("error")
    assert all(code == 200 for _, _, code in timings), timings
    assert max(s for _, s, _ in timings) < 2.0, timings
    # probes answered while the model was scoring the volume, not only while it was being read
    mid = [p for p in progress if p[0] == BIG[2] and 0 < p[1] < BIG[2]]
    assert len(mid) >= 2, progress
    seconds, status, during = done["second_model"]  # the mark_normal model has its own queue
    assert status == 200 and during and seconds < 2.0, done["second_model"]
    print(f"inference {done['seconds']:.1f} s; {len(timings)} probes, slowest {max(s for _, s, _ in timings):.3f} s, "
          f"median {sorted(s for _, s, _ in timings)[len(timings) // 2]:.3f} s")


def test_waiting_inferences_have_positions(site):
    c, url = site["client"], site["url"]
    threads = [threading.Thread(target=lambda i=i: c.infer("anomaly", ["case_a", "case_b", "case_n"][i], {}))
               for i in range(3)]
    for t in threads:
        t.start()
    seen_waiting = []
    deadline = time.monotonic() + 120
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        q = requests.get(f"{url}/medad/queue", timeout=30).json()
        seen_waiting.append([w["position"] for w in q["waiting"]])
        time.sleep(0.02)
    for t in threads:
        t.join(120)
    assert any(p == [1, 2] for p in seen_waiting) or any(p == [1] for p in seen_waiting), seen_waiting[:20]
    assert requests.get(f"{url}/medad/queue", timeout=30).json()["running"] == []
