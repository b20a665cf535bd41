"""Today's outputs stay BIT-IDENTICAL: the tiny-backbone golden fixtures recorded from the original code (e582c4e).

``tests/fixtures/golden_tiny.npz`` was written by ``tests/fixtures/record_golden.py`` (its docstring says how);
this test recomputes the same things through the current public API (``medad.load_detector``, ``predict``,
``fit_memory_bank``, ``fit_normalizers``, ``medad.io.load_volume``, the volume runner) and compares the exact float32
bytes. A restructuring that moves code must not change a single bit; a deliberate behaviour change re-records the
fixture (and says so in its commit).

Torch runs single-threaded here, as in the recording: with 2 threads even ``torch.rand`` gives other bytes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
GOLDEN = FIXTURES / "golden_tiny.npz"


def _recorder():
    spec = importlib.util.spec_from_file_location("record_golden", FIXTURES / "record_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rg = _recorder()


@pytest.fixture(scope="module")
def golden() -> dict:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def current(one_thread) -> dict:
    """Everything the recording script records, recomputed with the current code and its public API."""
    import medad
    from medad.inference import VolumeRunner
    from medad.io import load_volume

    return rg.compute(medad.load_detector, load_volume, VolumeRunner, REPO)


def _check(golden: dict, key: str, value) -> None:
    """``value`` has exactly the recorded float32 bytes (full array, or SHA-256 for large ones)."""
    a = rg.as_f32(value)
    if key in golden:
        ref = golden[key]
        assert a.shape == ref.shape, f"{key}: shape {a.shape} != recorded {ref.shape}"
        if a.tobytes() != ref.tobytes():
            diff = np.abs(a.astype(np.float64) - ref.astype(np.float64))
            pytest.fail(f"{key}: not bit-identical to the golden fixture (max |diff| {np.nanmax(diff):.3g}, "
                        f"{int((diff > 0).sum())} of {a.size} values differ)")
        return
    assert key + ".sha256" in golden, f"{key} was not recorded"
    shape = tuple(int(s) for s in golden[key + ".shape"])
    assert a.shape == shape, f"{key}: shape {a.shape} != recorded {shape}"
    if rg.digest(a) != str(golden[key + ".sha256"]):
        probe = a.reshape(-1)[rg.probe_index(a.size)]
        diff = np.abs(probe.astype(np.float64) - golden[key + ".probe"].astype(np.float64))
        pytest.fail(f"{key}: SHA-256 of the float32 bytes differs from the golden fixture (at 64 probe positions: "
                    f"max |diff| {diff.max():.3g}, {int((diff > 0).sum())} differ)")


def test_fixture_was_recorded_from_the_original_code(golden):
    meta = json.loads(str(golden["meta_json"]))
    assert meta["threads"] == 1 and "medad_base" in meta["medad_file"], meta
    assert GOLDEN.stat().st_size < 200_000


def test_inputs_are_the_recorded_ones(golden, one_thread):
    for name, t in rg.make_inputs().items():
        assert rg.digest(rg.as_f32(t)) == str(golden[f"inputs.{name}.sha256"]), \
            f"the seeded input {name!r} changed (torch.rand or interpolate), so the fixture cannot be compared"


@pytest.mark.parametrize("case", ["zs_a", "zs_b", "zsfit_a", "fs_a", "fit_a"])
def test_detector_outputs_bit_identical(golden, current, case):
    res = current[case]
    expected = {k.split(".")[1] for k in golden if k.startswith(case + ".")}
    got = {name for name in rg.RESULT_FIELDS if getattr(res, name) is not None}
    assert got == expected, f"{case}: fields {sorted(got)} != recorded {sorted(expected)}"
    for name in sorted(got):
        _check(golden, f"{case}.{name}", getattr(res, name))


@pytest.mark.parametrize("case", sorted(rg.VOLUME_CASES))
def test_volume_runner_bit_identical(golden, current, case):
    vol, res = current[case]
    _check(golden, f"{case}.input", vol)  # medad.io reads the sample data as before
    np.testing.assert_array_equal(np.asarray(vol.affine, dtype=np.float64), golden[f"{case}.input_affine"])
    _check(golden, f"{case}.anomaly_map", res.anomaly_map)
    np.testing.assert_array_equal(np.asarray(res.anomaly_map.affine, dtype=np.float64), golden[f"{case}.map_affine"])
    _check(golden, f"{case}.slice_scores", res.slice_scores)
    assert np.float64(res.volume_score).tobytes() == golden[f"{case}.volume_score"].tobytes(), \
        (res.volume_score, float(golden[f"{case}.volume_score"]))
    assert list(res.top_slices) == golden[f"{case}.top_slices"].tolist()
    np.testing.assert_array_equal(np.asarray(res.skipped, dtype=bool), golden[f"{case}.skipped"])
