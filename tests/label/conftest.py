"""Fixtures for the MONAI Label app tests: studies, an app copy, a headless client, a real Orthanc.

Orthanc comes from Debian (``apt-get install -y orthanc orthanc-dicomweb``); the ``orthanc`` fixture starts it on
127.0.0.1 with free ports and a temporary storage folder, waits for it and stops it by PID. Tests that need it are
skipped (with the install command) only when the binary or the DICOMweb plugin is missing or it does not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
APP_SRC = REPO / "apps" / "medad_label"
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
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
def write_phantom_nifti(path: Path, seed: int, n_lesions: int = 2, shape=(48, 40, 12), flip_x: bool = False) -> Path:
    """A small synthetic CT head as NIfTI (int16 HU). ``flip_x`` stores it with a non-RAS (+x) orientation."""
    from medad.data.phantoms import default_affine, make_ct_phantom

    affine = default_affine(shape, (4.0, 4.0, 8.0))
    if flip_x:
        affine[:3, 0] *= -1
        affine[0, 3] = -affine[0, 3]
    hu, _, affine = make_ct_phantom(seed, shape=shape, n_lesions=n_lesions, affine=affine)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    return path


@pytest.fixture(scope="session")
def studies_dir(tmp_path_factory) -> Path:
    """A local datastore folder with three NIfTI studies (``case_a`` flipped, ``case_b``, ``case_n`` normal)."""
    d = tmp_path_factory.mktemp("studies")
    write_phantom_nifti(d / "case_a.nii.gz", seed=1, flip_x=True)
    write_phantom_nifti(d / "case_b.nii.gz", seed=2)
    write_phantom_nifti(d / "case_n.nii.gz", seed=3, n_lesions=0)
    return d


@pytest.fixture()
def app_dir(tmp_path) -> Path:
    """A private copy of ``apps/medad_label`` (MONAI Label writes logs/, model/, bin/ into the app folder)."""
    dst = tmp_path / "medad_label"
    shutil.copytree(APP_SRC, dst, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"))
    return dst


# ------------------------------------------------------------------------------------------------------ client
def configure_monailabel(app_dir: Path, studies: str, conf: dict, tmp: Path) -> None:
    """Point MONAI Label's settings (and the environment ``app_instance()`` re-reads) at this app and datastore."""
    import medad.label.asgi  # noqa: F401  (shim + handlers)
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
@dataclass
class Orthanc:
    url: str            # REST root, http://127.0.0.1:<port>
    dicomweb: str       # DICOMweb root, <url>/dicom-web
    http_port: int
    dicom_port: int
    proc: subprocess.Popen
    storage: Path

    def upload(self, files) -> list[str]:
        """POST each DICOM file to /instances; returns the Orthanc instance ids."""
        ids = []
        for f in files:
            r = requests.post(f"{self.url}/instances", data=Path(f).read_bytes(), timeout=30)
            r.raise_for_status()
            ids.append(r.json()["ID"])
        return ids

    def series_modalities(self) -> list[str]:
        """Modality of every series, through QIDO-RS."""
        r = requests.get(f"{self.dicomweb}/series", headers={"Accept": "application/dicom+json"}, timeout=30)
        r.raise_for_status()
        return sorted(s["00080060"]["Value"][0] for s in (r.json() if r.content else []))


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc with the DICOMweb plugin on 127.0.0.1 (skipped only if it is not installed or cannot start).

    Orthanc 1.10 cannot bind its DICOM (DIMSE) port to loopback only, so the DICOM server is disabled (the port is
    still allocated and configured); ``RemoteAccessAllowed: false`` makes the HTTP server refuse non-local clients.
    """
    exe = shutil.which("Orthanc")
    if exe is None or not ORTHANC_PLUGIN.is_file():
        pytest.skip("Orthanc is not installed: apt-get install -y orthanc orthanc-dicomweb")
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": "medad-test", "HttpPort": http_port, "DicomPort": dicom_port, "DicomServerEnabled": False,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
        "Plugins": [str(ORTHANC_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpTimeout": 60,
    }
    (root / "orthanc.json").write_text(json.dumps(cfg, indent=1))
    log = open(root / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:
        if not wait_http(f"{url}/system", 30, proc) or not wait_http(f"{url}/dicom-web/studies", 10, proc):
            tail = (root / "orthanc.log").read_text(errors="replace")[-1500:]
            pytest.skip(f"Orthanc did not start (exit code {proc.poll()}):\n{tail}")
        yield Orthanc(url, f"{url}/dicom-web", http_port, dicom_port, proc, root)
    finally:
        stop_pid(proc)
        log.close()
