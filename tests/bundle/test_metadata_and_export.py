"""metadata versions, verify_net_in_out, ckpt_export and SliceAnomalyNet's state dicts (the zoo's schema and checks:
test_zoo_verify.py)."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import BUNDLE, CONFIGS, model_overrides

def test_metadata_matches_installed_versions():
    import monai
    import numpy

    import medad

    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["monai_version"] == monai.__version__
    assert meta["required_packages_version"]["medad"] == medad.__version__
    assert meta["numpy_version"] == numpy.__version__
    assert meta["version"] in meta["changelog"]


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), device="cpu", **_overrides())


def _overrides() -> dict:
    return {k: "$None" if v is None else v for k, v in model_overrides().items()}


@pytest.fixture(scope="module")
def net_with_bank():
    """A SliceAnomalyNet whose detector has a memory bank, fitted normalizers and non-default options."""
    import medad.bundle as mb

    kw = model_overrides()
    net = mb.SliceAnomalyNet(backbone=kw.get("backbone"), adapters=kw.get("adapters", "demo"))
    support = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    net.detector.fit_memory_bank(support)
    net.detector.fit_normalizers(support)
    net.detector.options.thresholds = (0.4, 0.6, 0.8)
    net.detector.options.image_score_rule = "map_max"
    return net


def test_state_dict_round_trip_keeps_bank_and_options(net_with_bank):
    import medad.bundle as mb
    from medad.checkpoints import is_checkpoint

    sd = net_with_bank.state_dict()
    assert is_checkpoint(sd) and sd["medad"]["memory_bank"]["seg"].shape == net_with_bank.detector.memory_bank.seg.shape
    fresh = mb.SliceAnomalyNet(backbone="tiny", adapters=None)
    fresh.load_state_dict(sd)
    assert fresh.detector.options == net_with_bank.detector.options
    assert fresh.detector.options.thresholds == (0.4, 0.6, 0.8) and fresh.detector.options.image_score_rule == "map_max"
    x = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(fresh(x), net_with_bank(x))


def test_bundle_model_pt_and_checkpoint_are_one_format(net_with_bank, tmp_path):
    """save_model (models/model.pt), SliceAnomalyNet.state_dict() and medad.checkpoints.save_checkpoint write the
    same checkpoint; each loads in the other's reader with identical outputs."""
    import medad
    import medad.bundle as mb
    from medad.checkpoints import read_checkpoint, save_checkpoint

    det = net_with_bank.detector
    bundle_file = mb.save_model(net_with_bank, tmp_path / "models" / "model.pt")
    ckpt_file = save_checkpoint(det, tmp_path / "ckpt.pt", include_backbone=det.backbone == "tiny")
    a, b, c = read_checkpoint(bundle_file), read_checkpoint(ckpt_file), net_with_bank.state_dict()
    for other in (b, c):
        assert set(a) == set(other) and set(a["medad"]) == set(other["medad"])
        for branch in ("seg_adapters", "det_adapters"):
            assert all(torch.equal(a[branch][k], other[branch][k]) for k in a[branch])
        assert torch.equal(a["medad"]["memory_bank"]["det"], other["medad"]["memory_bank"]["det"])
        assert a["medad"]["thresholds"] == other["medad"]["thresholds"] == [0.4, 0.6, 0.8]
    x = torch.rand(2, 3, 224, 200, generator=torch.Generator().manual_seed(5))
    ref = det.predict(x)
    via_factory = medad.load_detector(adapters=str(bundle_file)).predict(x)  # the bundle's file, medad's reader
    net = mb.SliceAnomalyNet(backbone="tiny", adapters=None)
    net.load_state_dict(torch.load(ckpt_file, map_location="cpu", weights_only=True))  # medad's file, bundle's reader
    with torch.no_grad():
        via_bundle = net(x)[:, 0]
    assert torch.equal(via_factory.anomaly_maps, ref.anomaly_maps)
    assert torch.equal(via_factory.image_scores, ref.image_scores)
    assert torch.equal(via_bundle, ref.anomaly_maps)
    assert net.detector.fingerprint() == det.fingerprint()


def test_nested_network_uses_the_flat_module_state(net_with_bank):
    """Inside another module (a prefix), SliceAnomalyNet's entries are the detector's flat module state."""
    import medad.bundle as mb

    outer = torch.nn.Sequential(net_with_bank)
    sd = outer.state_dict()
    assert "0.detector.memory_bank.seg" in sd and "0.detector._extra_state" in sd
    other = torch.nn.Sequential(mb.SliceAnomalyNet(backbone="tiny", adapters=None))
    other.load_state_dict(sd)
    x = torch.rand(1, 3, 240, 240, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(other(x), outer(x))


def test_forward_shapes_and_range(net_with_bank):
    x = torch.rand(3, 3, 200, 160)
    with torch.no_grad():
        y = net_with_bank(x)
    assert y.shape == (3, 1, 200, 160) and y.dtype == torch.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    torch.testing.assert_close(y[:, 0], net_with_bank.detector.predict(x).anomaly_maps)


def test_ckpt_export_from_adapter_checkpoint(net_with_bank, tmp_path):
    """models/model.pt is an MVFA/medad adapter checkpoint; ckpt_export loads it into network_def and traces it."""
    import medad.bundle as mb
    from medad.checkpoints import is_checkpoint, read_checkpoint
    from monai.bundle import ckpt_export

    ckpt = tmp_path / "models" / "model.pt"
    mb.save_model(net_with_bank, ckpt)
    assert is_checkpoint(read_checkpoint(ckpt))
    ts_path = tmp_path / "models" / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(ckpt),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                use_trace=True, input_shape=[1, 3, 240, 240], **_overrides())
    extra = {"metadata.json": "", "inference.json": ""}
    ts = torch.jit.load(str(ts_path), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads((CONFIGS / "metadata.json").read_text())["version"]
    x = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net_with_bank(x), atol=1e-5, rtol=1e-4)  # the bank made it into the export


def test_load_state_dict_rejects_wrong_backbone(net_with_bank):
    import medad.bundle as mb
    from medad.checkpoints import CheckpointError

    sd = net_with_bank.state_dict()
    sd["medad"] = {**sd["medad"], "backbone": "ViT-L-14-336"}
    with pytest.raises(CheckpointError, match="backbone"):
        mb.SliceAnomalyNet(backbone="tiny", adapters=None).load_state_dict(sd)


def test_large_files_lists_the_known_clip_weights():
    """large_files_clip.yml names the OpenAI file with the SHA-256 medad verifies (and keeps it out of models/*.pt);
    there is no large_files.yml, whose entries the model zoo's release step would download into its zip."""
    import yaml

    from medad.model.backbone import get_backbone_config

    assert not any((BUNDLE / f"large_files.{ext}").exists() for ext in ("yml", "yaml", "json"))
    entries = yaml.safe_load((BUNDLE / "large_files_clip.yml").read_text())["large_files"]
    known = get_backbone_config("ViT-L-14-336")["known_weights"]["openai"]
    (entry,) = entries
    assert entry["hash_type"] == "sha256" and entry["hash_val"] == known["sha256"]
    assert entry["hash_val"] == "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"
    assert entry["url"] == known["url"] and entry["path"] == "models/backbone/" + known["filename"]


def test_weight_overrides_reach_the_detector(tmp_path):
    """--backbone_weights / --model_path (released MVFA format) are what network_def loads."""
    from monai.bundle import ConfigParser

    import medad
    from medad.checkpoints import save_checkpoint
    from medad.weights import WeightsError

    src = medad.load_detector(backbone="tiny")
    torch.manual_seed(3)
    for p in src.model.adapters.parameters():
        p.data.normal_()
    official = tmp_path / "Brain.pth"
    save_checkpoint(src, official, official_only=True)  # {'seg_adapters', 'det_adapters'} only, like MVFA's release

    def network_def(**override):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser.update(override)
        return parser.get_parsed_content("network_def")

    net = network_def(backbone="tiny", model_path=str(official))
    for a, b in zip(net.detector.model.adapters.parameters(), src.model.adapters.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError) as err:
        network_def(backbone="tiny", model_path=str(official), backbone_weights=str(tmp_path / "ViT-L-14-336px.pt"))
    assert isinstance(err.value.__cause__, WeightsError) and "ViT-L-14-336px.pt" in str(err.value.__cause__)
