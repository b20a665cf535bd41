"""precision='auto' resolves per device capability (the capability probes are mocked both ways)."""

import builtins
import io
import logging

import pytest
import torch

from medad.model import precision as P


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    """The suite pins ``MEDAD_PRECISION=fp32`` (tests/conftest.py); these tests exercise the probe itself."""
    monkeypatch.delenv(P.ENV_VAR, raising=False)


@pytest.fixture
def cpu_with(monkeypatch):
    """Make the CPU probe report exactly the given flags."""

    def set_flags(*flags):
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))

    return set_flags


@pytest.fixture
def cuda_with(monkeypatch):
    """Make CUDA available with or without bf16 support (no GPU needed)."""

    def set_bf16(supported: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)

    return set_bf16


@pytest.mark.parametrize("flags, expected", [
    (("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"), "bf16"),  # Sapphire Rapids and newer
    (("avx2", "avx512f", "avx512_bf16"), "bf16"),  # Cooper Lake, Zen 4
    (("avx2", "amx_bf16", "amx_tile"), "bf16"),
    (("avx2", "avx512f"), "fp32"),  # AVX-512 without bf16 units (Skylake-SP, Ice Lake)
    (("avx2",), "fp32"),  # AVX2 only (Zen 2/3): bf16 is emulated and measured 4x slower
    ((), "fp32"),
])
def test_auto_on_cpu_follows_the_bf16_flags(cpu_with, flags, expected):
    cpu_with(*flags)
    assert P.native_bf16("cpu") is (expected == "bf16")
    assert P.resolve_precision("auto", "cpu") == expected
    assert P.resolve_precision(None, torch.device("cpu")) == expected  # None means auto


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_is_bf16_supported(cuda_with, cpu_with, supported, expected):
    cuda_with(supported)
    cpu_with("avx2", "avx512_bf16", "amx_bf16")  # the CPU's flags must not leak into the CUDA decision
    assert P.resolve_precision("auto", "cuda") == expected
    assert P.resolve_precision("auto", "cuda:0") == expected


def test_auto_on_cuda_without_cuda_is_fp32(monkeypatch, cpu_with):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: pytest.fail("probed without CUDA"))
    cpu_with("amx_bf16")
    assert P.resolve_precision("auto", "cuda") == "fp32"


def test_other_devices_stay_fp32(cpu_with):
    cpu_with("amx_bf16", "avx512_bf16")
    assert P.resolve_precision("auto", "meta") == "fp32"


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "FP32", "BF16"])
def test_explicit_choices_are_honoured_whatever_the_device(cpu_with, cuda_with, explicit):
    cpu_with()  # no bf16 units: auto would pick fp32 ...
    assert P.resolve_precision(explicit, "cpu") == explicit.lower()  # ... but an explicit bf16 is kept
    cpu_with("amx_bf16")
    cuda_with(False)
    assert P.resolve_precision(explicit, "cpu") == explicit.lower()
    assert P.resolve_precision(explicit, "cuda") == explicit.lower()


@pytest.mark.parametrize("bad", ["fp16", "float32", "", "half"])
def test_unknown_precision_is_refused(bad):
    with pytest.raises(ValueError, match="precision must be one of"):
        P.resolve_precision(bad, "cpu")


def test_the_auto_choice_is_logged(cpu_with, caplog):
    cpu_with("avx2", "avx512_bf16")
    with caplog.at_level(logging.INFO, logger=P.__name__):
        assert P.resolve_precision("auto", "cpu") == "bf16"
    assert "precision 'auto' -> bf16 on cpu" in caplog.text
    assert "avx512_bf16" in caplog.text


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: fpu sse2 {flags}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2 {flags}
"""


def _fake_cpuinfo(monkeypatch, text):
    real_open = builtins.open

    def fake_open(file, *args, **kwargs):
        if str(file) == "/proc/cpuinfo":
            if text is None:
                raise FileNotFoundError(file)
            return io.StringIO(text)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    P.cpu_flags.cache_clear()


@pytest.fixture
def fresh_probe():
    P.cpu_flags.cache_clear()
    yield
    P.cpu_flags.cache_clear()  # later tests probe the real machine again


@pytest.mark.parametrize("flags, expected_flags, expected", [
    ("avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_vnni", {"avx2", "avx512f", "avx512_bf16",
                                                                         "amx_bf16", "amx_tile"}, "bf16"),
    ("avx2 fma avx512f avx512_vnni", {"avx2", "avx512f"}, "fp32"),
    ("avx avx2 fma", {"avx2"}, "fp32"),
])
def test_cpu_probe_reads_proc_cpuinfo(monkeypatch, fresh_probe, flags, expected_flags, expected):
    _fake_cpuinfo(monkeypatch, CPUINFO.format(vendor="GenuineIntel", flags=flags))
    assert P.cpu_flags() == expected_flags
    assert P.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("capability, expected_flags", [("AVX512", {"avx2", "avx512f"}), ("AVX2", {"avx2"}),
                                                        ("DEFAULT", set())])
def test_cpu_probe_without_proc_cpuinfo_never_claims_bf16(monkeypatch, fresh_probe, capability, expected_flags):
    _fake_cpuinfo(monkeypatch, None)  # macOS, Windows, containers without /proc
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert P.cpu_flags() == expected_flags
    assert P.resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize("forced", ["fp32", "bf16", " BF16 "])
def test_env_override_fixes_what_auto_means_but_not_explicit_choices(monkeypatch, cpu_with, cuda_with, forced):
    monkeypatch.setenv(P.ENV_VAR, forced)
    want = forced.strip().lower()
    for flags in [(), ("amx_bf16",)]:
        cpu_with(*flags)
        assert P.resolve_precision("auto", "cpu") == want
    cuda_with(want == "fp32")  # the probe would say the opposite
    assert P.resolve_precision("auto", "cuda") == want
    other = "bf16" if want == "fp32" else "fp32"
    assert P.resolve_precision(other, "cpu") == other


def test_bad_env_override_is_refused(monkeypatch):
    monkeypatch.setenv(P.ENV_VAR, "fp16")
    with pytest.raises(ValueError, match="MEDAD_PRECISION='fp16'"):
        P.resolve_precision("auto", "cpu")
    assert P.resolve_precision("fp32", "cpu") == "fp32"  # not consulted for explicit choices


@pytest.mark.parametrize("flags, expected", [(("avx2",), "fp32"), (("avx2", "avx512f", "amx_bf16"), "bf16")])
def test_front_ends_default_to_auto_and_log_the_choice(cpu_with, caplog, flags, expected):
    """load_detector and the bundle network resolve 'auto' by default; the detector and its provenance report the
    resolved choice."""
    import medad
    from medad.bundle.network import SliceAnomalyNet
    from medad.inference import provenance

    cpu_with(*flags)
    want = torch.bfloat16 if expected == "bf16" else torch.float32
    with caplog.at_level(logging.INFO, logger=P.__name__):
        det = medad.load_detector(backbone="tiny")
    assert (det.precision, det.model.backbone_dtype) == (expected, want)
    assert f"precision 'auto' -> {expected} on cpu" in caplog.text
    assert provenance(det)["precision"] == expected  # run.json, series records, bundle and Label results
    net = SliceAnomalyNet(backbone="tiny", adapters=None)
    assert (net.detector.precision, net.detector.model.backbone_dtype) == (expected, want)
    assert medad.load_detector(backbone="tiny", precision="fp32").precision == "fp32"  # explicit still honoured


def test_every_front_end_defaults_to_auto(tmp_path):
    """API, batch scoring, CLI flags, the bundle config and the Label app config all default to 'auto'."""
    import inspect
    import json
    from pathlib import Path

    import medad
    from medad.batch.api import score
    from medad.cli import build_parser
    from medad.label.config import ConfigError, LabelConfig

    assert inspect.signature(medad.load_detector).parameters["precision"].default == "auto"
    assert inspect.signature(score).parameters["precision"].default == "auto"
    args = build_parser().parse_args(["score", str(tmp_path), "--out", str(tmp_path / "o")])
    assert args.precision == "auto"
    assert build_parser().parse_args(["score", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--precision", "fp32"]).precision == "fp32"
    assert LabelConfig.from_conf(str(tmp_path), {}).precision == "auto"
    assert LabelConfig.from_conf(str(tmp_path), {"precision": "bf16"}).precision == "bf16"
    with pytest.raises(ConfigError, match="expected auto, fp32 or bf16"):
        LabelConfig.from_conf(str(tmp_path), {"precision": "fp16"})
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "mri_ct_slice_anomaly_mvfa" / "configs" / "inference.json"
    cfg = json.loads(bundle.read_text())
    assert cfg["precision"] == "auto"
    assert (cfg["network_def"]["precision"], cfg["network_def"]["device"]) == ("@precision", "@device")
