"""``medad label`` as a real server process: binds 127.0.0.1 on a free port, answers /info and /infer, and stops
cleanly on SIGTERM (``kill PID``, ``docker stop``, systemd): uvicorn finishes its graceful shutdown, then re-raises the
signal, so the exit status is -SIGTERM (not -SIGKILL: no forced kill was needed) and the port is released."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import requests
import SimpleITK as sitk

from labelkit import free_port, stop_pid, wait_http


def test_medad_label_server_process(app_dir, studies_dir, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAI_LABEL_")}  # no settings of other tests
    env["MONAI_LABEL_SESSION_PATH"] = str(tmp_path / "sessions")
    cmd = [sys.executable, "-m", "medad", "label", "--studies", str(studies_dir), "--app", str(app_dir),
           "--port", str(port), "--backbone", "tiny", "--device", "cpu", "--thresholds", "0.3,0.5,0.7",
           "--shots", "2", "--log-level", "info"]
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_http(f"{url}/info/", 240, proc):
            pytest.fail(f"server did not start (exit code {proc.poll()}):\n"
                        f"{(tmp_path / 'server.log').read_text()[-3000:]}")
        # listening on loopback only
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening

        info = requests.get(f"{url}/info/", timeout=30).json()
        assert info["models"]["anomaly"]["labels"] == {"anomaly_low": 1, "anomaly_mid": 2, "anomaly_high": 3}

        r = requests.post(f"{url}/infer/anomaly", params={"image": "case_a", "output": "image"},
                          data={"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8"})},
                          timeout=300)
        assert r.status_code == 200, r.text
        (tmp_path / "label.nrrd").write_bytes(r.content)
        label = sitk.ReadImage(str(tmp_path / "label.nrrd"))
        ref = sitk.ReadImage(str(studies_dir / "case_a.nii.gz"))
        assert label.GetSize() == ref.GetSize() and label.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_allclose(label.GetDirection(), ref.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(label.GetOrigin(), ref.GetOrigin(), atol=1e-4)

        r = requests.post(f"{url}/infer/anomaly", params={"image": "case_a", "output": "json"}, timeout=300)
        assert r.status_code == 200 and len(r.json()["slice_scores"]) == ref.GetSize()[2]
        assert requests.post(f"{url}/infer/anomaly", params={"image": "nope"}, timeout=60).status_code == 404

        # reviewer loop as 3D Slicer's "Train" button runs it: asynchronously, in a MONAI Label worker process
        with open(studies_dir / "case_n.nii.gz", "rb") as f:
            r = requests.put(f"{url}/datastore/label", params={"image": "case_n", "tag": "normal"},
                             files={"label": ("case_n.nii.gz", f)}, timeout=60)
        assert r.status_code == 200, r.text
        assert requests.post(f"{url}/train/anomaly", timeout=60).json()["status"] in ("SUBMITTED", "RUNNING")
        deadline = time.monotonic() + 300
        while (task := requests.get(f"{url}/train/", timeout=30).json())["status"] in ("SUBMITTED", "RUNNING"):
            assert time.monotonic() < deadline, task
            time.sleep(1)
        assert task["status"] == "DONE", task.get("details")
        deadline = time.monotonic() + 60  # the server reloads the new site checkpoint in the background
        while not (bank := requests.get(f"{url}/info/", timeout=30).json()["models"]["anomaly"]["medad"]).get(
                "site_checkpoint") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert bank["reviewer_loop"]["status"] == "activated" and bank["bank_normalizer_fitted"] is True
        assert bank["site_checkpoint"] is True and bank["memory_bank_tokens"] == 2 * 17 * 17  # shots 2 (TEST_CONF)

        # the server still answers after the reviewer loop, then stops on SIGTERM by itself
        assert requests.get(f"{url}/info/", timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("medad label did not exit within 60 s of SIGTERM")
    finally:
        stop_pid(proc, timeout=20)
        log.close()
        print((tmp_path / "server.log").read_text(errors="replace")[-4000:])  # shown by pytest on failure
    assert code == -signal.SIGTERM, f"exit status {code} after SIGTERM (expected -{int(signal.SIGTERM)})"
    server_log = (tmp_path / "server.log").read_text(errors="replace")
    shutdown = server_log[server_log.rfind("Shutting down"):] if "Shutting down" in server_log else ""
    assert "Application shutdown complete" in shutdown and f"Finished server process [{proc.pid}]" in shutdown, \
        "no graceful uvicorn shutdown in the server log"
    assert "Traceback" not in shutdown, shutdown[-3000:]
    deadline = time.monotonic() + 10
    while True:  # the port is released
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        assert time.monotonic() < deadline, f"port {port} still accepts connections after the server stopped"
        time.sleep(0.5)
