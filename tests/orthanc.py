"""A throw-away Orthanc DICOMweb server on loopback for tests (shared by the ``medad score`` and MONAI Label tests).

Needs the Debian packages ``orthanc`` and ``orthanc-dicomweb`` (``apt-get install orthanc orthanc-dicomweb``); the
tests that use it skip when the binary or the plugin is missing. The server gets a free port, a temporary storage
folder, no DICOM (DIMSE) listener, no remote access and no authentication, and is stopped (by its pid) afterwards.

Usage::

    from orthanc import orthanc_server          # tests/ is on sys.path (tests/conftest.py lives there)

    with orthanc_server(tmp_path) as srv:
        srv.dicomweb   # "http://127.0.0.1:<port>/dicom-web"
        srv.get("/instances")

or the ``orthanc`` pytest fixture below (import it into a test module: ``from orthanc import orthanc  # noqa``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["OrthancServer", "orthanc_available", "orthanc_server", "orthanc"]

ORTHANC_BIN = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_available() -> str:
    """Empty string when Orthanc + its DICOMweb plugin are installed, else why not."""
    if shutil.which(ORTHANC_BIN) is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    port: int
    process: subprocess.Popen
    storage: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def get(self, path: str):
        """GET a REST path (e.g. ``/instances``) and decode the JSON answer."""
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read().decode())


@contextlib.contextmanager
def orthanc_server(workdir: str | Path | None = None, timeout_s: float = 60.0) -> Iterator[OrthancServer]:
    """Start Orthanc with the DICOMweb plugin on a free loopback port; stop it on exit."""
    why = orthanc_available()
    if why:
        pytest.skip(why)
    work = Path(workdir or tempfile.mkdtemp(prefix="orthanc-"))
    work.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    storage = work / "storage"
    cfg = {
        "Name": "medad-test", "HttpPort": port, "DicomServerEnabled": False, "DicomPort": _free_port(),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "StorageDirectory": str(storage),
        "IndexDirectory": str(storage), "Plugins": [str(DICOMWEB_PLUGIN)], "HttpTimeout": 30,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (work / "orthanc.json").write_text(json.dumps(cfg))
    log = open(work / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC_BIN, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = OrthancServer(port, proc, storage)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}: {(work / 'orthanc.log').read_text()[-2000:]}")
            try:
                server.get("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer on port {port} within {timeout_s} s")
                time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[OrthancServer]:
    """A running Orthanc (DICOMweb at ``orthanc.dicomweb``) for the test module."""
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as srv:
        yield srv
