"""Square padding/resizing (invertible, array vs dict) and RAS slice streaming vs MONAI Orientation."""

import os

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Invertd, Orientation

from medad.transforms import (
    VIEWS,
    PadToSquare,
    PadToSquared,
    RASSlicer,
    SquareResize,
    SquareResized,
    ras_orientation,
    square_pad_width,
)


def _affine(kind: str) -> torch.Tensor:
    """4x4 affines: permuted/flipped axes, and an oblique one (rotated ~20 degrees)."""
    if kind == "identity":
        return torch.eye(4, dtype=torch.float64)
    if kind == "flipped":
        return torch.diag(torch.tensor([-0.8, -0.8, 2.5, 1.0], dtype=torch.float64))
    if kind == "permuted":  # source axis0 -> -y, axis1 -> +z, axis2 -> -x
        a = torch.zeros(4, 4, dtype=torch.float64)
        a[1, 0], a[2, 1], a[0, 2], a[3, 3] = -1.5, 2.0, -0.9, 1.0
        a[:3, 3] = torch.tensor([10.0, -20.0, 5.0])
        return a
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    a = _affine("permuted")
    a[:3, :3] = rot @ a[:3, :3]
    return a


def test_square_pad_width():
    assert square_pad_width((10, 10)) == [(0, 0), (0, 0)]
    assert square_pad_width((6, 11)) == [(2, 3), (0, 0)]
    assert square_pad_width((240, 155)) == [(0, 0), (42, 43)]


def test_pad_to_square_inverse_exact():
    img = MetaTensor(torch.rand(1, 7, 12, 5), affine=_affine("flipped"))
    t = PadToSquare(spatial_axes=(0, 1))
    out = t(img)
    assert out.shape == (1, 12, 12, 5)
    assert torch.all(out[:, :2] == 0) and torch.all(out[:, 9:] == 0)
    torch.testing.assert_close(out[:, 2:9].as_tensor(), img.as_tensor())
    back = t.inverse(out)
    assert back.shape == img.shape and len(back.applied_operations) == 0
    torch.testing.assert_close(back.as_tensor(), img.as_tensor())
    torch.testing.assert_close(back.affine, img.affine)


def test_square_resize_no_crop_and_invertd_round_trip():
    img = MetaTensor(torch.rand(1, 30, 20, 4), affine=_affine("flipped"))
    pre = Compose([EnsureTyped(keys="image"), SquareResized(keys="image", size=24, spatial_axes=(0, 1))])
    d = pre({"image": img})
    assert d["image"].shape == (1, 24, 24, 4)
    # the model output ("pred") inherits the image's trace; Invertd restores the source grid
    d["pred"] = d["image"] * 2.0
    inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(d)
    assert inv["pred"].shape == img.shape
    torch.testing.assert_close(inv["pred"].affine, img.affine)
    # a smooth image survives pad+resize+inverse closely (no crop: the borders are kept)
    smooth = MetaTensor(torch.linspace(0, 1, 30)[:, None, None].expand(30, 20, 4)[None].clone(), affine=img.affine)
    t = SquareResize(size=60, spatial_axes=(0, 1))
    back = t.inverse(t(smooth))
    assert back.shape == smooth.shape
    # no crop: both ramp ends come back; only the voxel next to the zero padding blurs (interpolation)
    assert float((back - smooth)[:, :, 1:-1].abs().max()) < 0.02


def test_spatial_array_and_dict_forms_agree():
    img = MetaTensor(torch.rand(1, 9, 14))
    for a, d in [(PadToSquare(), PadToSquared("x")), (SquareResize(16), SquareResized("x", 16))]:
        torch.testing.assert_close(d({"x": img.clone()})["x"].as_tensor(), a(img.clone()).as_tensor())


@pytest.mark.parametrize("kind", ["identity", "flipped", "permuted", "oblique"])
@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_ras_slicer_matches_monai_orientation(kind, axis):
    vol = MetaTensor(torch.rand(1, 6, 7, 8), affine=_affine(kind))
    ras = Orientation(axcodes="RAS")(vol).as_tensor()[0]  # [X, Y, Z] in RAS
    s = RASSlicer(vol.shape[1:], vol.affine, axis)
    dim = {"sagittal": 0, "coronal": 1, "axial": 2}[axis]
    expected = ras.movedim(dim, 0)
    got = torch.cat([s.read(vol.as_tensor()[0], a, min(a + 3, s.n_slices)) for a in range(0, s.n_slices, 3)])
    torch.testing.assert_close(got, expected)
    assert s.slice_shape == tuple(expected.shape[1:])
    # writing the RAS slices back reproduces the source array
    dst = torch.zeros(vol.shape[1:])
    for a in range(0, s.n_slices, 4):
        s.write(dst, a, min(a + 4, s.n_slices), expected[a: a + 4])
    torch.testing.assert_close(dst, vol.as_tensor()[0])
    # source_index: RAS slice k lives at source index source_index(k) along source_dim
    k = 1
    torch.testing.assert_close(expected[k], s.read(vol.as_tensor()[0], k, k + 1)[0])
    src_slice = vol.as_tensor()[0].select(s.source_dim, s.source_index(k))
    assert torch.equal(torch.sort(src_slice.flatten())[0], torch.sort(expected[k].flatten())[0])


def test_ras_orientation_lps_space_matches_monai():
    aff = _affine("permuted")
    vol = MetaTensor(torch.rand(1, 5, 6, 7), affine=aff, meta={"space": "LPS"})
    ras = Orientation(axcodes="RAS")(vol).as_tensor()[0]
    perm, flips = ras_orientation(aff, space="LPS")
    manual = vol.as_tensor()[0].permute(perm).flip([j for j in range(3) if flips[j]])
    torch.testing.assert_close(manual, ras)


def test_views_are_invertible_and_radiological_layout():
    x = torch.rand(2, 5, 7)
    for to_view, from_view in VIEWS.values():
        torch.testing.assert_close(from_view(to_view(x)), x)
    # axial RAS slice s[x, y]: radiological image has anterior (high y) at the top, patient right (high x) left
    s = torch.zeros(4, 6)
    s[3, 5] = 1  # most right, most anterior
    img = VIEWS["radiological"][0](s)
    assert img.shape == (6, 4) and img[0, 0] == 1


def test_bundle_style_pipeline_inverts_to_source_grid():
    """LoadImage-like volume -> Orientationd(RAS) -> ModalityIntensityd -> SquareResized -> model -> Invertd."""
    from monai.transforms import Orientationd

    from medad.transforms import CTWindow, ModalityIntensityd

    i, j, k = torch.meshgrid(torch.arange(10.0), torch.arange(16.0), torch.arange(6.0), indexing="ij")
    ramp = (100 + 20 * i + 10 * j + 60 * k)[None]  # smooth, so only misalignment (not interpolation) gives errors
    src = MetaTensor(ramp, affine=_affine("oblique"), meta={"modality": "CT"})
    pre = Compose([
        Orientationd(keys="image", axcodes="RAS"),
        ModalityIntensityd(keys="image", ct=CTWindow("bone")),  # no clipping of the ramp
        SquareResized(keys="image", size=32, spatial_axes=(0, 1)),
    ])
    d = pre({"image": src})
    assert d["image"].shape[1:3] == (32, 32) and float(d["image"].max()) <= 1.0
    d["pred"] = d["image"].clone()  # an identity "model"
    out = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False)(d)["pred"]
    assert out.shape == src.shape
    torch.testing.assert_close(out.affine, src.affine)
    # the inverted prediction lines up with the windowed source voxel by voxel (interpolation error only)
    expected = CTWindow("bone")(src.as_tensor())
    inner = (slice(None), slice(1, -1))  # the voxels next to the zero padding blur (interpolation)
    err = float((out.as_tensor() - expected)[inner].abs().mean())
    assert err < 0.02
    for dim in (1, 2, 3):  # a flipped result along any axis would be caught
        assert float((out.as_tensor() - expected.flip(dim))[inner].abs().mean()) > 3 * err


_BRATS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "data", "brats2015_subset")


@pytest.mark.skipif(not os.path.exists(f"{_BRATS}/mvfa_layout/Brain_AD/test/good/img/brats_2013_pat0001_1_103.png"),
                    reason="BraTS subset not present")
def test_brats_png_view_matches_the_shared_training_pngs():
    """``view="brats_png"`` shows the model a volume slice laid out like the PNGs the adapters are trained on."""
    from monai.transforms import LoadImage
    from PIL import Image

    vol = LoadImage(image_only=True, ensure_channel_first=True)(
        f"{_BRATS}/nifti/test/brats_2013_pat0001_1/Flair_subtrMeanDivStd.nii.gz")
    png = np.asarray(Image.open(f"{_BRATS}/mvfa_layout/Brain_AD/test/good/img/brats_2013_pat0001_1_103.png"))
    s = RASSlicer(vol.shape[1:], vol.affine, "axial", vol.meta.get("space"))
    k = int(np.flatnonzero(s.source_index(np.arange(s.n_slices)) == 103)[0])
    sl = s.read(vol.as_tensor()[0], k, k + 1)[0]
    corr = {name: np.corrcoef(to(sl).numpy().ravel(), png.ravel().astype(float))[0, 1]
            for name, (to, _) in VIEWS.items()}
    assert corr["brats_png"] > 0.999 and corr["radiological"] < 0.95 and corr["ras"] < 0.95, corr
