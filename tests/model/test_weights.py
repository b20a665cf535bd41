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
