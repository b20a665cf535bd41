import copy

import torch

from medad.model import MemoryBank
from medad.model.normalization import ScoreNormalizer, fuse


def test_bank_excludes_the_class_token_by_default():
    seg = torch.randn(4, 3, 290, 8)  # [L, B, N, D]
    bank = MemoryBank.from_tokens(seg, seg.clone())
    assert bank.seg.shape == (4, 3 * 289, 8)
    with_cls = MemoryBank.from_tokens(seg, seg.clone(), include_cls=True)
    assert with_cls.seg.shape == (4, 3 * 290, 8)
    # the class token of image 0 is not in the default bank
    cls0 = torch.nn.functional.normalize(seg[0, 0, 0], dim=0)
    assert not torch.isclose(bank.seg[0] @ cls0, torch.tensor(1.0), atol=1e-6).any()
    assert torch.isclose(with_cls.seg[0] @ cls0, torch.tensor(1.0), atol=1e-6).any()


def test_fitted_bank_scores_its_own_images_as_normal(tiny_detector):
    det = copy.deepcopy(tiny_detector)
    normals = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(5))
    det.fit_memory_bank(normals)
    assert len(det.memory_bank) == 2 * 289
    own = det.predict(normals)
    other = det.predict(torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(6)))
    assert float(own.bank_maps.max()) < 1e-4  # every query patch is in the bank
    assert float(other.bank_scores.min()) > float(own.bank_scores.max())


def test_normalizer_min_max_and_default_range():
    norm = ScoreNormalizer(n_levels=4)
    torch.testing.assert_close(norm("pixel_text", torch.tensor([0.0, 2.0, 4.0])), torch.tensor([0.0, 0.5, 1.0]))
    norm.fit("pixel_text", torch.tensor([[1.0, 3.0], [2.0, 2.5]]))
    assert norm.range("pixel_text") == (1.0, 3.0)
    torch.testing.assert_close(norm("pixel_text", torch.tensor([1.0, 2.0, 5.0])), torch.tensor([0.0, 0.5, 2.0]))
    assert not norm.is_fitted("pixel_bank")


def test_fusion_on_a_hand_computed_case():
    norm = ScoreNormalizer(n_levels=4)
    norm.fit("pixel_text", torch.tensor([0.0, 2.0]))
    norm.fit("pixel_bank", torch.tensor([1.0, 3.0]))
    norm.fit("image_text", torch.tensor([0.0, 1.0]))
    norm.fit("image_bank", torch.tensor([0.0, 4.0]))
    text_map = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    bank_map = torch.tensor([[[1.0, 1.0], [3.0, 5.0]]])
    amap, score = fuse(norm, text_map, torch.tensor([0.5]), bank_map, torch.tensor([2.0]))
    torch.testing.assert_close(amap, torch.tensor([[[0.0, 0.25], [1.0, 1.0]]]))  # last pixel 1.5 clamped to 1
    torch.testing.assert_close(score, torch.tensor([0.5]))  # 0.5*0.5 + 0.5*0.5
    _, max_score = fuse(norm, text_map, torch.tensor([0.5]), bank_map, torch.tensor([2.0]), image_score_rule="map_max")
    torch.testing.assert_close(max_score, torch.tensor([1.5]))  # max of the unclamped fused map


def test_fit_normalizers_maps_the_fitting_set_to_0_1(tiny_detector):
    det = copy.deepcopy(tiny_detector)
    x = torch.rand(3, 3, 240, 240, generator=torch.Generator().manual_seed(7))
    det.fit_memory_bank(x[:1])
    det.fit_normalizers(x)
    res = det.predict(x)
    for branch, raw in [("image_text", res.level_scores.sum(1)), ("image_bank", res.bank_scores),
                        ("pixel_text", res.level_maps.sum(1)), ("pixel_bank", res.bank_maps)]:
        scaled = det.normalizer(branch, raw)
        assert abs(float(scaled.min())) < 1e-5 and abs(float(scaled.max()) - 1.0) < 1e-5, branch
    expected = 0.5 * det.normalizer("image_text", res.level_scores.sum(1)) + 0.5 * det.normalizer(
        "image_bank", res.bank_scores)
    torch.testing.assert_close(res.image_scores, expected)
