"""Project-wide test set-up: no network, an isolated medad cache, shared tiny detectors."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile

import pytest

# An isolated weights/text-feature cache for the whole run (set before medad is imported anywhere).
os.environ.setdefault("MEDAD_HOME", tempfile.mkdtemp(prefix="medad-test-home-"))
# precision="auto" (the default) resolves to fp32 in every test and subprocess, whatever the CPU's bf16 units, so exact
# numbers hold on AVX2-only and AMX machines alike; tests of the probe remove it (tests/model/test_precision.py).
os.environ["MEDAD_PRECISION"] = "fp32"

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class NetworkAccessError(RuntimeError):
    pass


def _guarded_connect(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to reach the network: {address!r} (only loopback is allowed)")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise NetworkAccessError(f"test tried to reach the network: {address!r} (only loopback is allowed)")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Fail any test that opens a non-loopback connection (models and data must never be downloaded)."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex


@pytest.fixture(scope="session")
def tiny_detector():
    """A tiny-backbone detector with fresh (untrained) adapters. Do not mutate it: copy.deepcopy first."""
    import medad

    return medad.load_detector(backbone="tiny", object_name="Brain")
