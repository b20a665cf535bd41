"""Fixtures for the MONAI Label app tests: phantom studies, a private app copy, a real Orthanc.

Helpers (clients, servers, ports) are in ``labelkit.py``. Orthanc comes from Debian
(``apt-get install -y orthanc orthanc-dicomweb``) through the shared ``tests/orthanc.py`` (127.0.0.1, free port,
temporary storage, stopped by PID); tests that need it are skipped when it is not installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labelkit import APP_SRC, write_phantom_nifti


@pytest.fixture(scope="module")
def studies_dir(tmp_path_factory) -> Path:
    """A local datastore folder with three NIfTI studies (``case_a`` flipped, ``case_b``, ``case_n`` normal), fresh
    for each test module (MONAI Label writes its labels and bookkeeping into it)."""
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


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """A running Orthanc with the DICOMweb plugin (``pacs.url``, ``pacs.dicomweb``), one per test module."""
    from orthanc import orthanc_server  # tests/orthanc.py, shared with the medad score tests

    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as srv:
        yield srv
