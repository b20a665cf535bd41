"""Regenerate the OHIF screenshots of ``docs/img`` (a tool, not a test): the sample CT in Orthanc, one inference
through the medad MONAI Label app, then headless Chromium driven over the DevTools protocol opens the SEG and the
Parametric Map in OHIF's Basic Viewer.

    python tests/label/ohif_screenshots.py --out docs/img --conf adapters=demo

Needs ``apt-get install -y orthanc orthanc-dicomweb chromium``. Everything binds 127.0.0.1; Chromium runs with
background networking disabled and a throw-away profile, and is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from labelkit import APP_SRC, REPO, TEST_CONF, live_server  # noqa: E402
from orthanc import orthanc_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


class DevTools:
    """A minimal Chrome DevTools Protocol client over a plain websocket (no extra dependency)."""

    def __init__(self, ws_url: str) -> None:
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", ws_url).groups()
        self.sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade"
                           f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self.sock.recv(4096)
        self.pending = buf.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.pending) < n:
            self.pending += self.sock.recv(1 << 16)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def _message(self) -> bytes:
        data = b""
        while True:
            b1, b2 = self._read(2)
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            data += self._read(n)
            if b1 & 0x80:
                return data

    def call(self, method: str, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        n, mask = len(payload), os.urandom(4)
        size = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                                   else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(b"\x81" + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = json.loads(self._message())
            if msg.get("id") == self.next_id:
                return msg.get("result", msg)

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))


def _chromium(profile: Path) -> tuple[subprocess.Popen, DevTools]:
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--enable-unsafe-swiftshader", "--use-angle=swiftshader", f"--user-data-dir={profile}",
                             "--window-size=1280,800", "--remote-debugging-address=127.0.0.1",
                             "--remote-debugging-port=0", "about:blank"], stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if m := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line):
            break
    else:
        raise RuntimeError("Chromium did not start its DevTools endpoint")
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/json", timeout=10) as r:
        page = next(t for t in json.load(r) if t["type"] == "page")
    return proc, DevTools(page["webSocketDebuggerUrl"])


def _double_click(dev: DevTools, text: str) -> bool:
    return bool(dev.js(f"""(() => {{
        const els = [...document.querySelectorAll('div')].filter(e => e.textContent.includes({json.dumps(text)})
                                                                     && e.children.length < 6);
        const e = els[els.length - 1]; if (!e) return false;
        e.dispatchEvent(new MouseEvent('dblclick', {{bubbles: true}})); return true; }})()"""))


def _click_button(dev: DevTools, text: str) -> bool:
    return bool(dev.js(f"""(() => {{ const b = [...document.querySelectorAll('button')]
        .find(b => b.textContent.trim().includes({json.dumps(text)})); if (b) {{ b.click(); return true; }}
        return false; }})()"""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "artifacts")
    ap.add_argument("--conf", action="append", default=[], help="app option KEY=VALUE (default: the test model)")
    ap.add_argument("--series", default=str(REPO / "sample_data" / "ct_head_phantom" / "dicom"))
    ap.add_argument("--wait", type=float, default=25.0, help="seconds for OHIF to load")
    args = ap.parse_args(argv)
    import medad.io
    import pydicom
    import requests

    user = dict(kv.split("=", 1) for kv in args.conf)
    conf = {"device": "cpu", **user} if user else dict(TEST_CONF)
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(glob.glob(os.path.join(args.series, "*.dcm")))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    with tempfile.TemporaryDirectory(prefix="medad_ohif_", ignore_cleanup_errors=True) as tmp_s:
        tmp = Path(tmp_s)
        with orthanc_server(tmp / "orthanc") as pacs:
            medad.io.stow(pacs.dicomweb, files)
            app = tmp / "medad_label"
            shutil.copytree(APP_SRC, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
            with live_server(app, pacs.dicomweb, conf, tmp) as url:
                res = requests.post(f"{url}/infer/anomaly", params={"image": ds.SeriesInstanceUID, "output": "json"},
                                    timeout=900).json()
                print(json.dumps({k: res.get(k) for k in ("volume_score", "top_slices", "label_voxels")}))
                proc, dev = _chromium(tmp / "profile")
                try:
                    dev.call("Page.enable")
                    dev.call("Page.navigate", url=f"{url}/ohif/viewer?StudyInstanceUIDs={ds.StudyInstanceUID}")
                    time.sleep(args.wait)
                    _click_button(dev, "Confirm and Hide")
                    assert _double_click(dev, "Anomaly segmentation"), "no SEG series in the OHIF series list"
                    time.sleep(10)
                    _click_button(dev, "Yes")  # "Do you want to open this Segmentation?"
                    time.sleep(8)
                    dev.screenshot(args.out / "ohif_anomaly_seg.png")
                    assert _double_click(dev, "Anomaly map"), "no Parametric Map series in the OHIF series list"
                    time.sleep(12)
                    dev.screenshot(args.out / "ohif_anomaly_pmap.png")
                finally:
                    proc.terminate()
                    proc.wait(15)
    print(f"wrote {args.out / 'ohif_anomaly_seg.png'} and {args.out / 'ohif_anomaly_pmap.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
