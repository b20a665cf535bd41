import copy

import pytest
import torch

import medad
from medad.model.scoring import bank_distance, level_maps, patch_probs


def images(n, size=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_output_shapes_follow_the_input_size(tiny_detector):
    res = tiny_detector.predict(images(2, size=100)[:, :, :, :80])
    assert res.anomaly_maps.shape == (2, 100, 80)
    assert res.level_maps.shape == (2, 4, 100, 80)
    assert res.level_scores.shape == (2, 4)
    assert res.image_scores.shape == (2,)
    assert res.bank_maps is None and res.bank_scores is None
    assert float(res.anomaly_maps.min()) >= 0.0 and float(res.anomaly_maps.max()) <= 1.0
    # level maps are probabilities, level scores are means of probabilities
    assert 0.0 <= float(res.level_maps.min()) and float(res.level_maps.max()) <= 1.0


def test_zero_shot_outputs_are_the_level_sums_over_the_number_of_levels(tiny_detector):
    res = tiny_detector.predict(images(2))
    torch.testing.assert_close(res.anomaly_maps, (res.level_maps.sum(1) / 4).clamp(0, 1))
    torch.testing.assert_close(res.image_scores, res.level_scores.sum(1) / 4)


def test_batch_of_n_equals_n_singles(tiny_detector):
    x = images(4, seed=1)
    batch = tiny_detector.predict(x)
    singles = [tiny_detector.predict(x[i:i + 1]) for i in range(4)]
    torch.testing.assert_close(batch.anomaly_maps, torch.cat([s.anomaly_maps for s in singles]), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.image_scores, torch.cat([s.image_scores for s in singles]), atol=1e-5, rtol=0)
    chunked = tiny_detector.predict(x, batch_size=3)
    torch.testing.assert_close(batch.level_maps, chunked.level_maps, atol=1e-5, rtol=0)


def test_two_loads_give_identical_outputs():
    x = images(2, seed=2)
    a = medad.load_detector(backbone="tiny").predict(x)
    b = medad.load_detector(backbone="tiny").predict(x)
    assert torch.equal(a.anomaly_maps, b.anomaly_maps) and torch.equal(a.image_scores, b.image_scores)


def test_text_features_are_unit_columns_and_depend_on_the_object_name(tiny_detector):
    t = tiny_detector.text_features
    assert t.shape == (64, 2)
    torch.testing.assert_close(t.norm(dim=0), torch.ones(2))
    other = medad.load_detector(backbone="tiny", object_name="Liver").text_features
    assert not torch.allclose(t, other)


def test_scoring_matches_a_hand_computed_case():
    # 2x2 grid of patches + class token, D=2; text normal=e0, abnormal=e1
    text = torch.eye(2)
    tokens = torch.tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]]])  # [B=1, N=5, D=2]
    probs = patch_probs(tokens, text)
    expected = torch.tensor([[0.0, 1.0, 0.5, 1.0]])  # softmax(100*[cos0, cos1])[1] saturates
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    maps = level_maps(tokens, text, (3, 3))  # bilinear on logits, align_corners=True: corners keep patch values
    torch.testing.assert_close(maps[0, [0, 0, 2, 2], [0, 2, 0, 2]], expected[0], atol=1e-6, rtol=0)
    # the centre interpolates LOGITS (mean logit gap 25 -> ~1.0), not probabilities (which would give 0.625)
    torch.testing.assert_close(maps[0, 1, 1], torch.sigmoid(torch.tensor(25.0)))
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    d = bank_distance(tokens, bank)
    torch.testing.assert_close(d, torch.tensor([[0.0, 1.0, 1 - 2 ** -0.5, 1.0]]), atol=1e-6, rtol=0)


def test_backbone_is_frozen_and_only_adapters_train(tiny_detector):
    trainable = {n for n, p in tiny_detector.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.adapters.") for n in trainable)
    n_params = sum(p.numel() for n, p in tiny_detector.named_parameters() if n in trainable)
    assert n_params == 2 * 4 * 2 * 64 * 64


def test_forward_prefix_plus_levels_equals_forward(tiny_detector):
    x = tiny_detector.prepare(images(2, seed=3))
    seg, det = tiny_detector.model(x)
    seg2, det2 = tiny_detector.model.forward_levels(tiny_detector.model.forward_prefix(x))
    assert seg.shape == (4, 2, 290, 64)
    assert torch.equal(seg, seg2) and torch.equal(det, det2)


def test_residual_update_is_0_8_0_1_0_1(tiny_detector):
    adapters = tiny_detector.model.adapters
    x = torch.randn(1, 5, 64)
    out, seg_h, det_h = adapters(x, 0)
    expected = 0.8 * x + 0.1 * adapters.seg_adapters[0].fc2(seg_h) + 0.1 * adapters.det_adapters[0].fc2(det_h)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(seg_h, torch.nn.functional.leaky_relu(x @ adapters.seg_adapters[0].fc1[0].weight.T, 0.01))


def test_bf16_runs_and_stays_close_to_fp32(tiny_detector):
    x = images(2, seed=4)
    det = copy.deepcopy(tiny_detector)
    det.precision = "bf16"
    assert det.model.visual.conv1.weight.dtype == torch.bfloat16
    assert det.model.adapters.seg_adapters[0].fc1[0].weight.dtype == torch.float32
    a, b = tiny_detector.predict(x), det.predict(x)
    assert (a.anomaly_maps - b.anomaly_maps).abs().max() < 0.05
    assert a.anomaly_maps.dtype == b.anomaly_maps.dtype == torch.float32
    assert (a.image_scores - b.image_scores).abs().max() < 0.05


def test_bad_input_shape_is_explained(tiny_detector):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_detector.predict(torch.rand(2, 240, 240))


def test_fast_map_paths_equal_the_spec_formulas():
    from medad.model import MemoryBank
    from medad.model.scoring import pixel_logits, upsample_patch_map

    g = torch.Generator().manual_seed(9)
    text = torch.nn.functional.normalize(torch.randn(8, 2, generator=g), dim=0)
    tokens = torch.randn(4, 3, 1 + 25, 8, generator=g)  # [L, B, N, D], 5x5 grid
    spec = pixel_logits(tokens, text, (37, 41)).softmax(dim=-3)[..., 1, :, :]  # softmax of upsampled logits
    torch.testing.assert_close(level_maps(tokens, text, (37, 41)), spec, atol=1e-5, rtol=0)
    bank = MemoryBank.from_tokens(torch.randn(4, 2, 26, 8, generator=g), torch.randn(4, 2, 26, 8, generator=g))
    per_level = sum(upsample_patch_map(bank_distance(tokens[l], bank.seg[l]).unsqueeze(-1), (37, 41))[..., 0, :, :]
                    for l in range(4))
    torch.testing.assert_close(bank.maps(tokens, "seg", (37, 41)), per_level, atol=1e-5, rtol=0)
