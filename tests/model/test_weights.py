import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

import medad
from medad import weights as W
from medad.cli import main as cli_main


def test_sha256_mismatch_is_refused(tmp_path):
    f = tmp_path / "ViT-L-14-336px.pt"
    f.write_bytes(b"not the real weights")
    with pytest.raises(W.WeightsError, match="not a known release"):
        W.verify_weights(f)
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch"):
        W.verify_weights(f, expected_sha256="0" * 64)
    with pytest.raises(W.WeightsError, match="SHA-256 mismatch"):
        medad.load_detector(backbone="tiny", weights=f, expected_sha256="0" * 64)
    assert W.verify_weights(f, hashlib.sha256(b"not the real weights").hexdigest())


def test_cli_import_verify_and_refuse(tmp_path, capsys):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    assert cli_main(["weights", "verify", str(f)]) == 1
    assert "not a known release" in capsys.readouterr().err
    assert cli_main(["weights", "import", str(f), "--sha256", digest]) == 0
    cached = W.cache_dir() / "weights" / "w.bin"
    assert cached.read_bytes() == b"abc"
    assert json.loads((W.cache_dir() / "weights" / "index.json").read_text())["w.bin"]["sha256"] == digest


def test_real_backbone_without_weights_says_how_to_import():
    with pytest.raises(W.WeightsError, match="medad weights import"):
        medad.load_detector(backbone="ViT-L-14-336")


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_backbone_weights_load_from_state_dict_files(tmp_path, fmt):
    from medad.model.backbone import build_clip, get_backbone_config

    clip = build_clip({**get_backbone_config("tiny"), "init_seed": 123})  # different weights than the default seed
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    path = tmp_path / f"tiny.{fmt}"
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save({"state_dict": sd}, path)
    digest = W.sha256_file(path)
    det = medad.load_detector(backbone="tiny", weights=path, expected_sha256=digest)
    assert det.metadata["backbone_sha256"] == digest
    torch.testing.assert_close(det.model.visual.conv1.weight, clip.visual.conv1.weight)
    default = medad.load_detector(backbone="tiny")
    assert not torch.allclose(det.model.visual.conv1.weight, default.model.visual.conv1.weight)


def test_position_embeddings_are_resized_from_a_336px_checkpoint(tmp_path):
    from medad.model.backbone import build_clip, get_backbone_config

    cfg = get_backbone_config("tiny")
    cfg["clip"]["vision_cfg"]["image_size"] = 336  # a 24x24 grid checkpoint, like OpenAI's ViT-L-14-336px
    sd = build_clip(cfg).state_dict()
    assert sd["visual.positional_embedding"].shape == (577, 64)
    path = tmp_path / "tiny336.pt"
    torch.save(sd, path)
    det = medad.load_detector(backbone="tiny", weights=path, expected_sha256=W.sha256_file(path))
    assert det.model.visual.positional_embedding.shape == (290, 64)


def test_text_features_for_several_names_match_the_detectors():
    from medad.factory import text_features

    feats = text_features("tiny", ["Brain", "Liver"])
    assert feats.shape == (2, 64, 2)
    torch.testing.assert_close(feats[1], medad.load_detector(backbone="tiny", object_name="Liver").text_features)
    assert not torch.allclose(feats[0], feats[1])


def _half_and_float_twins(sd, dtype):
    """``(reduced, twin)``: every float tensor in ``dtype`` and the same values upcast to fp32."""
    reduced = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    twin = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in reduced.items()}
    return reduced, twin


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_backbone_file_gives_the_maps_of_its_fp32_twin(tmp_path, dtype):
    """An all-fp16 (or bf16) safetensors export loads (cast to fp32 before the 24x24 -> 17x17 position-embedding
    resize, whose CPU kernel has no fp16 version) and gives exactly the maps of the same values stored in fp32."""
    from medad.model.backbone import build_clip, get_backbone_config

    cfg = get_backbone_config("tiny")
    cfg["clip"]["vision_cfg"]["image_size"] = 336  # a 24x24 grid checkpoint, like OpenAI's ViT-L-14-336px
    reduced, twin = _half_and_float_twins(build_clip({**cfg, "init_seed": 7}).state_dict(), dtype)
    assert reduced["visual.positional_embedding"].shape == (577, 64)
    assert reduced["visual.positional_embedding"].dtype == dtype
    paths = {}
    for name, sd in (("reduced", reduced), ("twin", twin)):
        paths[name] = tmp_path / f"tiny336-{name}.safetensors"
        save_file(sd, str(paths[name]))
    dets = {name: medad.load_detector(backbone="tiny", weights=p, expected_sha256=W.sha256_file(p), precision="fp32")
            for name, p in paths.items()}
    assert dets["reduced"].metadata["backbone_sha256"] != dets["twin"].metadata["backbone_sha256"]
    for det in dets.values():
        assert det.model.visual.positional_embedding.shape == (290, 64)
        assert det.model.visual.positional_embedding.dtype == torch.float32
    images = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    out = {name: det.predict(images) for name, det in dets.items()}
    assert torch.equal(out["reduced"].anomaly_maps, out["twin"].anomaly_maps)
    assert torch.equal(out["reduced"].image_scores, out["twin"].image_scores)
    torch.testing.assert_close(dets["reduced"].text_features, dets["twin"].text_features, rtol=0, atol=0)
    # the weights really are the file's (not the default seed's): the 17x17 grid differs from the default init
    default = medad.load_detector(backbone="tiny", precision="fp32")
    assert not torch.allclose(dets["twin"].model.visual.positional_embedding, default.model.visual.positional_embedding)
