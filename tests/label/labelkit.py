"""Helpers for the MONAI Label app tests: ports, processes, phantom studies, a headless client, a live server."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

REPO = Path(__file__).resolve().parents[2]
APP_SRC = REPO / "apps" / "medad_label"
#: Small, fast test model: tiny backbone, random init, fresh adapters.
TEST_CONF = {"backbone": "tiny", "device": "cpu", "thresholds": "0.3,0.5,0.7", "shots": "2"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url`` until it answers 200 (False on timeout or if ``proc`` exits)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.25)
    return False


def stop_pid(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process by PID, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ------------------------------------------------------------------------------------------------------ data
def write_phantom_nifti(path: Path, seed: int, n_lesions: int = 2, shape=(48, 40, 12), flip_x: bool = False,
                        mask_path: Path | None = None, spacing=(4.0, 4.0, 8.0)) -> Path:
    """A small synthetic CT head as NIfTI (int16 HU). ``flip_x`` stores it with a non-RAS (+x) orientation;
    ``mask_path`` also writes its lesion mask (uint8) there."""
    from medad.synthetic.phantoms import default_affine, make_ct_phantom

    affine = default_affine(shape, spacing)
    if flip_x:
        affine[:3, 0] *= -1
        affine[0, 3] = -affine[0, 3]
    hu, mask, affine = make_ct_phantom(seed, shape=shape, n_lesions=n_lesions, affine=affine)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    if mask_path is not None:
        nib.save(nib.Nifti1Image((mask > 0).astype(np.uint8), affine), str(mask_path))
    return path


# ------------------------------------------------------------------------------------------------------ client
def configure_monailabel(app_dir: Path, studies: str, conf: dict, tmp: Path) -> None:
    """Point MONAI Label's settings (and the environment ``app_instance()`` re-reads) at this app and datastore."""
    importlib.import_module("medad.label.asgi")  # shim + 4xx handlers before monailabel is configured
    from monailabel.config import settings
    from monailabel.interfaces.utils.app import clear_cache

    settings.MONAI_LABEL_APP_DIR = str(app_dir)
    settings.MONAI_LABEL_STUDIES = str(studies)
    settings.MONAI_LABEL_APP_CONF = dict(conf)
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
    settings.MONAI_LABEL_TRACKING_ENABLED = False
    settings.MONAI_LABEL_AUTO_UPDATE_SCORING = False
    settings.MONAI_LABEL_SESSION_PATH = str(tmp / "sessions")
    settings.MONAI_LABEL_DICOMWEB_CACHE_PATH = str(tmp / "dicomweb_cache")
    settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER = {"Modality": "CT"}
    for k, v in settings.model_dump().items():  # app_instance() re-reads the environment
        os.environ[k] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    clear_cache()


@contextlib.contextmanager
def label_client(app_dir: Path, studies: str, conf: dict, tmp: Path):
    """FastAPI TestClient over the medad ASGI app (lifespan run, so the app is initialised)."""
    import medad.label.asgi
    from fastapi.testclient import TestClient
    from monailabel.interfaces.utils.app import clear_cache

    conf = {"workspace": str(tmp / "workspace"), **conf}  # the app's own files: private to this client
    configure_monailabel(app_dir, studies, conf, tmp)
    with TestClient(medad.label.asgi.app, raise_server_exceptions=False) as client:
        yield client
    clear_cache()


@contextlib.contextmanager
def live_server(app_dir: Path, studies: str, conf: dict, tmp: Path, startup_s: float = 120.0):
    """The medad ASGI app served by uvicorn on 127.0.0.1:<free port> in a thread of this process (a real socket,
    for clients such as a browser); yields the base URL."""
    import threading

    import uvicorn

    import medad.label.asgi
    from monailabel.interfaces.utils.app import clear_cache

    conf = {"workspace": str(tmp / "workspace"), **conf}
    configure_monailabel(app_dir, studies, conf, tmp)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(medad.label.asgi.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="medad-label-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_http(f"{url}/info/", startup_s):
            raise RuntimeError(f"the in-process MONAI Label server did not answer on {url} in {startup_s} s")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        clear_cache()


# ------------------------------------------------------------------------------------------------------ orthanc
def upload(pacs, files) -> list[str]:
    """POST each DICOM file to Orthanc's /instances; returns the Orthanc instance ids."""
    ids = []
    for f in files:
        r = requests.post(f"{pacs.url}/instances", data=Path(f).read_bytes(), timeout=30)
        r.raise_for_status()
        ids.append(r.json()["ID"])
    return ids


def series_modalities(pacs) -> list[str]:
    """Modality of every series in the PACS, through QIDO-RS (sorted)."""
    r = requests.get(f"{pacs.dicomweb}/series", headers={"Accept": "application/dicom+json"}, timeout=30)
    r.raise_for_status()
    return sorted(s["00080060"]["Value"][0] for s in (r.json() if r.content else []))


# ------------------------------------------------------------------------------------------------------ processes
@contextlib.contextmanager
def medad_label_server(studies: Path, workspace: Path | None, conf: dict, tmp: Path, startup_s: float = 240.0,
                       extra_args: tuple = (), cwd: Path | None = None):
    """``python -m medad label`` as a real process on 127.0.0.1:<free port> (``--conf`` pairs from ``conf``),
    stopped by PID afterwards; yields the base URL. The server log is printed at the end (shown on failure)."""
    import sys

    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAI_LABEL_")}  # no settings of other tests
    env["MONAI_LABEL_SESSION_PATH"] = str(tmp / "sessions")
    cmd = [sys.executable, "-m", "medad", "label", "--studies", str(studies), "--port", str(port),
           "--log-level", "info", *extra_args]
    if workspace is not None:
        cmd += ["--workspace", str(workspace)]
    for key, value in conf.items():
        cmd += ["--conf", key, str(value)]
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd or tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_http(f"{url}/info/", startup_s, proc):
            raise RuntimeError(f"medad label did not start (exit code {proc.poll()}):\n"
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        stop_pid(proc, timeout=20)
        log.close()
        print(log_path.read_text(errors="replace")[-4000:])


def tree_snapshot(root: Path, skip: tuple = ()) -> dict[str, tuple]:
    """``{relative path: (kind, size, mtime_ns)}`` of everything under ``root`` (top-level names in ``skip`` left
    out): compare two snapshots to see that nothing was created, changed or removed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("dir",)
        for name in filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.normpath(os.path.join(rel_dir, name))] = ("file", st.st_size, st.st_mtime_ns)
    return out
