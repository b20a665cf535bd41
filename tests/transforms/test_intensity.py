"""Intensity transforms: CT windows on hand-made HU, MR foreground percentiles, modality dispatch, array vs dict."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medad.transforms import (
    CT_WINDOWS,
    CTWindow,
    CTWindowd,
    FixedRangeScale,
    ForegroundPercentileScale,
    ForegroundPercentileScaled,
    MinMaxScale,
    MinMaxScaled,
    ModalityIntensity,
    ModalityIntensityd,
    PercentileScale,
    PercentileScaled,
    make_intensity,
    window_range,
)


def test_presets_in_one_dict():
    assert CT_WINDOWS == {"brain": (80.0, 40.0), "soft_tissue": (400.0, 40.0), "lung": (1500.0, -600.0),
                          "bone": (1800.0, 400.0), "liver": (150.0, 30.0)}
    assert window_range("brain") == (0.0, 80.0)
    assert window_range("soft_tissue") == (-160.0, 240.0)
    assert window_range("lung") == (-1350.0, 150.0)
    assert window_range("bone") == (-500.0, 1300.0)
    assert window_range("liver") == (-45.0, 105.0)
    assert window_range("W400L40") == window_range((400, 40)) == (-160.0, 240.0)
    assert window_range("W1500L-600") == (-1350.0, 150.0)
    with pytest.raises(ValueError, match="unknown CT window"):
        window_range("kidney")


def test_ct_brain_window_hand_made_hu():
    hu = torch.tensor([[-1000.0, 0.0, 20.0, 40.0, 60.0, 80.0, 1000.0]])  # [1, 7]
    out = CTWindow("brain")(hu)
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]], atol=1e-7)
    assert out.dtype == torch.float32
    lung = CTWindow("lung")(torch.tensor([[-1350.0, -600.0, 150.0, -975.0]]))
    np.testing.assert_allclose(lung.numpy(), [[0.0, 0.5, 1.0, 0.25]], atol=1e-7)


def test_ct_three_windows_as_channels_and_numpy_in_numpy_out():
    hu = np.array([[[-160.0, 40.0, 400.0]]], dtype=np.int16)  # [1, 1, 3]
    out = CTWindow(["brain", "soft_tissue", "bone"])(hu)
    assert isinstance(out, np.ndarray) and out.shape == (3, 1, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [0.0, 0.5, 1.0], atol=1e-6)  # brain [0, 80]
    np.testing.assert_allclose(out[1, 0], [0.0, 0.5, 1.0], atol=1e-6)  # soft tissue [-160, 240]
    np.testing.assert_allclose(out[2, 0], [340 / 1800, 540 / 1800, 900 / 1800], atol=1e-6)  # bone [-500, 1300]
    assert CTWindow("brain,soft_tissue,bone").windows == CTWindow(["brain", "soft_tissue", "bone"]).windows
    with pytest.raises(ValueError, match="single-channel"):
        CTWindow(["brain", "bone"])(np.zeros((2, 4, 4)))


def test_mr_foreground_percentiles():
    rng = np.random.default_rng(0)
    img = np.zeros((1, 40, 40, 10), dtype=np.float32)
    fg = rng.uniform(100, 500, size=(1, 20, 20, 10)).astype(np.float32)
    img[:, 10:30, 10:30] = fg
    t = ForegroundPercentileScale(0.5, 99.5, foreground="nonzero")
    lo, hi = t.ranges(img)[0]
    np.testing.assert_allclose([lo, hi], np.percentile(fg, [0.5, 99.5]), rtol=1e-6)
    out = t(img)
    assert out.min() == 0.0 and out.max() == 1.0
    inside = out[:, 10:30, 10:30]
    assert np.mean(inside == 1.0) == pytest.approx(0.005, abs=0.002)  # top 0.5 % saturate
    np.testing.assert_allclose(out[:, 15, 15, 3], np.clip((img[:, 15, 15, 3] - lo) / (hi - lo), 0, 1), rtol=1e-5)
    assert np.all(out[:, :10] == 0)  # background stays 0
    # "auto" (above the minimum) handles a non-zero constant background (z-scored BraTS) like "nonzero" on zeros
    shifted = img - 3.6
    np.testing.assert_allclose(ForegroundPercentileScale().ranges(shifted)[0], np.percentile(fg - 3.6, [0.5, 99.5]),
                               rtol=1e-5)
    # whole-image statistics would be dominated by the background
    assert PercentileScale(0.5, 99.5).ranges(img)[0][0] == 0.0


def test_percentile_subsampling_is_close_and_bounded():
    x = torch.arange(200 * 200 * 50, dtype=torch.float32).reshape(1, 200, 200, 50)  # a smooth ramp
    exact = PercentileScale(1, 99, max_samples=None).ranges(x)[0]
    approx = PercentileScale(1, 99, max_samples=100_000).ranges(x)[0]
    np.testing.assert_allclose(approx, exact, atol=0.01 * float(x.max()))  # within 1 % of the intensity range


def test_minmax_fixed_and_constant_image():
    x = torch.tensor([[2.0, 4.0, 6.0]])
    np.testing.assert_allclose(MinMaxScale()(x).numpy(), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(FixedRangeScale(0, 255)(torch.tensor([[0, 51, 255]], dtype=torch.uint8)).numpy(),
                               [[0.0, 0.2, 1.0]], atol=1e-6)
    assert torch.all(MinMaxScale()(torch.full((1, 3, 3), 7.0)) == 0)  # constant -> 0, no division by zero


def test_modality_dispatch_and_metatensor_kept():
    data = torch.tensor([[[-1000.0, 40.0, 80.0, 500.0]]])
    ct = MetaTensor(data.clone(), meta={"modality": "CT"})
    out = ModalityIntensity(ct=CTWindow("brain"))(ct)
    assert isinstance(out, MetaTensor) and out.meta["modality"] == "CT"
    np.testing.assert_allclose(out.numpy(), [[[0.0, 0.5, 1.0, 1.0]]])
    mi = ModalityIntensity()
    assert isinstance(mi.select(MetaTensor(data, meta={"modality": "MR"})), ForegroundPercentileScale)
    assert isinstance(mi.select(MetaTensor(data, meta={"0008|0060": "CT"})), CTWindow)
    assert type(mi.select(MetaTensor(data, meta={"modality": "CR"}))) is PercentileScale
    assert type(mi.select(data)) is PercentileScale  # unknown -> percentiles
    assert isinstance(mi.select(data, modality="ct"), CTWindow)


@pytest.mark.parametrize(
    "array_t, dict_t",
    [
        (CTWindow("brain"), CTWindowd(["a", "b"], "brain")),
        (CTWindow(["brain", "soft_tissue", "bone"]), CTWindowd(["a", "b"], ["brain", "soft_tissue", "bone"])),
        (ForegroundPercentileScale(1, 99), ForegroundPercentileScaled(["a", "b"], 1, 99)),
        (PercentileScale(2, 98), PercentileScaled(["a", "b"], 2, 98)),
        (MinMaxScale(), MinMaxScaled(["a", "b"])),
        (ModalityIntensity(), ModalityIntensityd(["a", "b"])),
    ],
)
def test_array_and_dict_forms_agree(array_t, dict_t):
    rng = np.random.default_rng(1)
    a = MetaTensor(torch.as_tensor(rng.normal(50, 300, (1, 8, 9, 5)).astype(np.float32)), meta={"modality": "CT"})
    b = torch.as_tensor(rng.normal(0, 1, (1, 8, 9, 5)).astype(np.float32))
    d = dict_t({"a": a, "b": b, "other": 3})
    torch.testing.assert_close(torch.as_tensor(d["a"]), torch.as_tensor(array_t(a)))
    torch.testing.assert_close(torch.as_tensor(d["b"]), torch.as_tensor(array_t(b)))
    assert d["other"] == 3


def test_modality_key_in_dict_form():
    d = {"image": torch.tensor([[[0.0, 40.0, 80.0]]]), "modality": "CT"}
    out = ModalityIntensityd("image", ct=CTWindow("brain"), modality_key="modality")(d)
    np.testing.assert_allclose(np.asarray(out["image"]), [[[0.0, 0.5, 1.0]]])


def test_make_intensity_specs():
    assert isinstance(make_intensity("auto"), ModalityIntensity)
    assert make_intensity("ct:brain").windows == [(0.0, 80.0)]
    assert len(make_intensity("ct:brain,soft_tissue,bone").windows) == 3
    mr = make_intensity("mr:1,99")
    assert (mr.lower, mr.upper, mr.foreground) == (1.0, 99.0, "auto")
    assert make_intensity("uint8").ranges(None) == [(0.0, 255.0)]
    with pytest.raises(ValueError, match="unknown intensity"):
        make_intensity("pet")
