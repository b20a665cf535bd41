"""Regenerate the OHIF screenshots of ``docs/img`` (a tool, not a test): the sample CT in Orthanc, one inference
through the medad MONAI Label app, then headless Chromium driven over the DevTools protocol opens OHIF's viewer at
the URL the result JSON gives (``viewer.ohif``: the study at its most anomalous slice) and shows

- ``ohif_top_slice_pmap.png``: the Parametric Map fused over the CT, with OHIF's colour bar (the legend of the map);
- ``ohif_top_slice_seg.png``: the graded SEG over the CT, with the segmentation panel listing the grades in their
  heat-ramp colours;

both at the most anomalous slice (the script checks OHIF's slice counter).

    python tests/label/ohif_screenshots.py --out docs/img          # the committed demo model

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

from labelkit import APP_SRC, REPO, live_server  # noqa: E402
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


def _click(dev: DevTools, selector_js: str) -> bool:
    """Press and release the mouse on the element ``selector_js`` (a JS expression) evaluates to."""
    return bool(dev.js(f"""(() => {{ const e = {selector_js}; if (!e) return false;
        const r = e.getBoundingClientRect(), x = r.x + r.width / 2, y = r.y + r.height / 2;
        for (const t of ['pointerdown', 'mousedown', 'pointerup', 'mouseup', 'click'])
            e.dispatchEvent(new MouseEvent(t, {{bubbles: true, clientX: x, clientY: y}}));
        return true; }})()"""))


def _click_text(dev: DevTools, text: str) -> bool:
    return _click(dev, f"[...document.querySelectorAll('div,span,button,label')]"
                       f".filter(e => e.textContent.trim() === {json.dumps(text)}).pop()")


def _slice(dev: DevTools) -> int:
    """OHIF's 1-based slice counter of the viewport (``I: 23 (23/32)``)."""
    text = dev.js("(document.querySelector('[data-cy=viewport-overlay-bottom-right]') || {}).innerText || ''")
    m = re.search(r"I:\s*(\d+)", text or "")
    return int(m.group(1)) if m else -1


def _go_to_slice(dev: DevTools, target: int, tries: int = 80) -> int:
    """Scroll the viewport (mouse wheel) until OHIF shows slice ``target``; returns the slice shown."""
    for _ in range(tries):
        now = _slice(dev)
        if now == target or now < 0:
            return now
        dev.call("Input.dispatchMouseEvent", type="mouseWheel", x=760, y=350, deltaX=0,
                 deltaY=120 if now < target else -120)
        time.sleep(0.6)
    return _slice(dev)


def _open_viewer(dev: DevTools, url: str, wait: float) -> int:
    dev.call("Page.navigate", url=url)
    time.sleep(wait)
    _click_button(dev, "Confirm and Hide")
    time.sleep(1)
    return _slice(dev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "artifacts")
    ap.add_argument("--conf", action="append", default=[],
                    help="app option KEY=VALUE (default: the app's defaults, i.e. the committed demo model, on CPU)")
    ap.add_argument("--series", default=str(REPO / "sample_data" / "ct_head_phantom" / "dicom"))
    ap.add_argument("--wait", type=float, default=25.0, help="seconds for OHIF to load")
    args = ap.parse_args(argv)
    import medad.io
    import pydicom
    import requests

    conf = {"device": "cpu", **dict(kv.split("=", 1) for kv in args.conf)}
    args.out.mkdir(parents=True, exist_ok=True)
    files = sorted(glob.glob(os.path.join(args.series, "*.dcm")))
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    shots = {}
    with tempfile.TemporaryDirectory(prefix="medad_ohif_", ignore_cleanup_errors=True) as tmp_s:
        tmp = Path(tmp_s)
        with orthanc_server(tmp / "orthanc") as pacs:
            medad.io.stow(pacs.dicomweb, files)
            app = tmp / "medad_label"
            shutil.copytree(APP_SRC, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
            with live_server(app, pacs.dicomweb, conf, tmp) as url:
                res = requests.post(f"{url}/infer/anomaly", params={"image": ds.SeriesInstanceUID, "output": "json"},
                                    timeout=900).json()
                print(res["summary"])
                top = res["viewer"]["top_slice_instances"][0]["slice_number"]
                viewer = url + res["viewer"]["ohif"]  # the study at its most anomalous slice
                proc, dev = _chromium(tmp / "profile")
                try:
                    dev.call("Page.enable")
                    # 1. the Parametric Map fused over the CT, OHIF's colour bar on
                    opened = _open_viewer(dev, viewer, args.wait)
                    assert opened == top, f"OHIF opened at slice {opened}, the result's top slice is {top}"
                    assert _double_click(dev, "Anomaly map"), "no Parametric Map series in the OHIF series list"
                    time.sleep(15)
                    assert _click(dev, "document.elementFromPoint(1222, 68)"), "no viewport action menu"
                    time.sleep(1.5)
                    assert _click_text(dev, "Display Color bar"), "no colour bar option"
                    time.sleep(2)
                    _click(dev, "document.elementFromPoint(140, 600)")  # close the menu (empty series panel)
                    time.sleep(1)
                    shots["pmap"] = _go_to_slice(dev, top)
                    time.sleep(2)
                    dev.screenshot(args.out / "ohif_top_slice_pmap.png")
                    # 2. the graded SEG over the CT, with the segmentation panel (the grades and their colours)
                    _open_viewer(dev, viewer, args.wait)
                    assert _double_click(dev, "Anomaly segmentation"), "no SEG series in the OHIF series list"
                    time.sleep(10)
                    _click_button(dev, "Yes")  # "Do you want to open this Segmentation?"
                    time.sleep(8)
                    if not dev.js("!!document.querySelector('[data-cy=segmentation-panel], .segmentation-panel')"):
                        _click(dev, "document.querySelector('[data-cy=panelSegmentation-btn]')")
                        time.sleep(2)
                    shots["seg"] = _go_to_slice(dev, top)
                    time.sleep(2)
                    dev.screenshot(args.out / "ohif_top_slice_seg.png")
                finally:
                    proc.terminate()
                    proc.wait(15)
    assert all(v == top for v in shots.values()), f"screenshots at slices {shots}, the top slice is {top}"
    print(f"wrote {args.out / 'ohif_top_slice_pmap.png'} and {args.out / 'ohif_top_slice_seg.png'} at slice {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
