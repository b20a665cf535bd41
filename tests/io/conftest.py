"""Fixtures for medad.io tests: small deterministic phantoms written as DICOM series on the fly."""

from __future__ import annotations

import pytest
from io_helpers import SHAPE

from medad.synthetic import make_ct_phantom


@pytest.fixture(scope="session")
def small_ct():
    """``(hu [48,40,10], mask, affine)`` with 2 lesions."""
    return make_ct_phantom(3, SHAPE, n_lesions=2, spacing=(4.0, 4.0, 8.0), noise_hu=3.0)
