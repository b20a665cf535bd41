import copy

import pytest
import torch

import medad
from medad.checkpoints import CheckpointError, save_checkpoint


def _trained_like(det, seed=11):
    """Perturb adapters so a checkpoint round trip is not trivially the fresh init."""
    det = copy.deepcopy(det)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in det.model.adapters.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return det


def test_official_format_round_trip_gives_identical_outputs(tiny_detector, tmp_path):
    det = _trained_like(tiny_detector)
    path = save_checkpoint(det, tmp_path / "Brain.pth", official_only=True)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"seg_adapters", "det_adapters"}
    assert set(raw["seg_adapters"]) == {f"{i}.fc{j}.0.weight" for i in range(4) for j in (1, 2)}
    assert raw["seg_adapters"]["0.fc1.0.weight"].shape == (64, 64)
    loaded = medad.load_detector(backbone="tiny", adapters=path)
    x = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(1))
    a, b = det.predict(x), loaded.predict(x)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps) and torch.equal(a.image_scores, b.image_scores)
    assert not torch.equal(a.anomaly_maps, tiny_detector.predict(x).anomaly_maps)


def test_medad_checkpoint_remembers_object_name_bank_normalizers_and_backbone(tiny_detector, tmp_path):
    det = _trained_like(medad.load_detector(backbone="tiny", object_name="Liver"))
    x = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(2))
    det.fit_memory_bank(x[:1])
    det.fit_normalizers(x)
    det.options.image_score_rule = "map_max"
    path = save_checkpoint(det, tmp_path / "liver.pt", extra={"protocol": "few-shot"}, include_backbone=True)
    loaded = medad.load_detector(adapters=path)  # backbone and object name come from the checkpoint
    assert loaded.backbone == "tiny" and loaded.options.object_name == "Liver"
    assert loaded.options.image_score_rule == "map_max" and loaded.metadata["protocol"] == "few-shot"
    torch.testing.assert_close(loaded.text_features, det.text_features)
    a, b = det.predict(x), loaded.predict(x)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps) and torch.equal(a.image_scores, b.image_scores)


def test_wrong_shape_checkpoint_names_the_file(tmp_path):
    bad = {"seg_adapters": {f"{i}.fc1.0.weight": torch.zeros(768, 1024) for i in range(4)} |
           {f"{i}.fc2.0.weight": torch.zeros(1024, 768) for i in range(4)}}
    bad["det_adapters"] = dict(bad["seg_adapters"])
    path = tmp_path / "vitl_adapters.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"vitl_adapters\.pth.*expected \(64, 64\), found \(768, 1024\)"):
        medad.load_detector(backbone="tiny", adapters=path)


def test_wrong_format_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "not_mvfa.pt"
    torch.save({"model": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"not_mvfa\.pt is not an MVFA adapter checkpoint"):
        medad.load_detector(backbone="tiny", adapters=path)
    with pytest.raises(CheckpointError, match=r"missing\.pt does not exist"):
        medad.load_detector(backbone="tiny", adapters=tmp_path / "missing.pt")


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"seg_adapters": {}, "det_adapters": {}, "x": copy.deepcopy}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        medad.load_detector(backbone="tiny", adapters=path)


def test_saved_checkpoint_has_normal_file_permissions(tiny_detector, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = save_checkpoint(tiny_detector, tmp_path / "perm.pt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
