"""A real Orthanc accepts every object medad writes (float PM, integer PM, SEG), previews the integer PM, keeps a
rerun as one copy and stores a map of other content as a new object (issue 11)."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import pytest

from medad.inference import OutputOptions, VolumeRunner, provenance, write_outputs
from medad.io import find_series, load_series
from medad.synthetic import make_ct_phantom, write_dicom_series
from orthanc import orthanc  # noqa: F401  (fixture)

pytestmark = pytest.mark.orthanc


def _post(srv, path: str, data: bytes) -> dict:
    req = urllib.request.Request(srv.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read().decode())


def _get(srv, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), b""


def test_orthanc_stores_all_objects_and_previews_the_integer_pm(orthanc, tiny_detector, tmp_path):  # noqa: F811
    hu, _, aff = make_ct_phantom(21, (40, 40, 6), n_lesions=1, spacing=(5.0, 5.0, 8.0))
    src = tmp_path / "ct"
    write_dicom_series(hu, aff, src, seed="orthanc-outputs")
    runner = VolumeRunner(tiny_detector, batch_size=6)
    opts = OutputOptions(overlays=0, dicom=True, pm="both", provenance=provenance(tiny_detector, runner))

    def write(folder, out):
        vol = load_series(find_series([str(folder)]).series[0])
        return write_outputs(runner.run(vol), vol, out, opts)

    rec = write(src, tmp_path / "out")
    for f in sorted(src.iterdir()):
        assert _post(orthanc, "/instances", f.read_bytes())["Status"] == "Success"
    ids = {}
    for name in ("pm", "pm_int", "seg"):
        answer = _post(orthanc, "/instances", (tmp_path / "out" / rec.files[name]).read_bytes())
        assert answer["Status"] == "Success", (name, answer)
        ids[name] = answer["ID"]
        tags = orthanc.get(f"/instances/{answer['ID']}/simplified-tags")
        uid_key = {"pm": "pm_instance", "pm_int": "pm_int_instance", "seg": "seg_instance"}[name]
        assert tags["SOPInstanceUID"] == rec.uids[uid_key]
    # the integer PM previews as a PNG (the float PM is stored and served as DICOM, Orthanc cannot render floats)
    status, ctype, body = _get(orthanc, f"/instances/{ids['pm_int']}/frames/0/preview")
    assert status == 200 and ctype.startswith("image/png") and body[:8] == b"\x89PNG\r\n\x1a\n"
    status, _, body = _get(orthanc, f"/instances/{ids['pm']}/file")
    assert status == 200 and body[128:132] == b"DICM"
    # a rerun writes the same objects: Orthanc keeps one copy
    again = write(src, tmp_path / "again")
    assert _post(orthanc, "/instances", (tmp_path / "again" / again.files["seg"]).read_bytes())["Status"] == \
        "AlreadyStored"
    # 5 of the 6 slices: another map, new UIDs, stored as new objects (not dropped as "AlreadyStored")
    subset = tmp_path / "five"
    subset.mkdir()
    for f in sorted(src.iterdir())[:-1]:
        shutil.copy(f, subset)
    other = write(subset, tmp_path / "other")
    for name in ("pm", "pm_int", "seg"):
        assert _post(orthanc, "/instances", (tmp_path / "other" / other.files[name]).read_bytes())["Status"] == \
            "Success", name
    assert len(orthanc.get("/instances")) == 6 + 3 + 3
