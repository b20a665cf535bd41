"""VolumeRunner with a fake detector: geometry (flipped/oblique affines), scores, batching, 2D, errors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medad.inference import VolumeResult, VolumeRunner


class FakeDetector:
    """Detector stand-in: map = mean intensity over channels (at the input size), score = mean of the map."""

    image_size = 240

    def __init__(self):
        self.shapes = []

    def predict(self, images):
        assert images.ndim == 4 and images.shape[1] == 3 and images.dtype == torch.float32
        assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
        self.shapes.append(tuple(images.shape))
        maps = images.mean(1)
        return SimpleNamespace(image_scores=maps.flatten(1).mean(1), anomaly_maps=maps)


def _oblique_affine() -> torch.Tensor:
    """Source axis0 -> -y (A->P), axis1 -> +z (I->S), axis2 -> -x (R->L), rotated 20 deg: axial = source dim 1."""
    a = torch.zeros(4, 4, dtype=torch.float64)
    a[1, 0], a[2, 1], a[0, 2], a[3, 3] = -1.5, 2.0, -0.9, 1.0
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    a[:3, :3] = rot @ a[:3, :3]
    a[:3, 3] = torch.tensor([12.0, -30.0, 7.0])
    return a


def _cube_volume(shape=(20, 24, 14), cube=(slice(5, 9), slice(10, 15), slice(3, 7)), affine=None, value=1000.0):
    arr = torch.zeros((1, *shape), dtype=torch.float32)
    arr[(0, *cube)] = value
    meta = {"modality": "MR", "filename_or_obj": "cube.nii.gz"}
    return MetaTensor(arr, affine=_oblique_affine() if affine is None else affine, meta=meta)


@pytest.mark.parametrize("view", ["radiological", "ras", "brats_png"])
def test_bright_cube_lands_in_source_voxels(view):
    vol = _cube_volume()
    runner = VolumeRunner(FakeDetector(), batch_size=4, intensity="minmax", view=view, resize_to_model=False)
    res = runner.run(vol)
    assert isinstance(res, VolumeResult)
    amap = res.anomaly_map
    assert isinstance(amap, MetaTensor) and amap.dtype == torch.float32
    assert tuple(amap.shape) == tuple(vol.shape)
    torch.testing.assert_close(amap.affine, vol.affine)
    assert amap.meta["filename_or_obj"] == "cube.nii.gz"
    torch.testing.assert_close(amap.as_tensor(), (vol.as_tensor() > 0).float())  # exactly the cube, nowhere else
    # axial after RAS is source dim 1 here; slices 10..14 hold the cube, the others are empty and skipped
    assert res.axis == "axial" and res.source_dim == 1 and res.n_slices == 24
    assert res.slice_scores.shape == (24,)
    assert set(res.top_slices) <= set(range(10, 15)) and len(res.top_slices) == 5
    assert np.array_equal(np.flatnonzero(~res.skipped), np.arange(10, 15))
    assert np.all(res.slice_scores[res.skipped] == 0)
    assert res.volume_score == pytest.approx(float(np.mean(res.slice_scores[10:15])))
    amap.add_(0.0)  # a normal tensor (not an inference-mode one): callers may edit it in place


def test_each_axis_and_scores_follow_source_index():
    vol = _cube_volume(cube=(slice(2, 4), slice(0, 24), slice(0, 14)))  # a slab: source dim0 rows 2..3
    vol[0, 12, 5, 5] = 1000.0  # one extra bright voxel
    for axis, dim in [("axial", 1), ("coronal", 0), ("sagittal", 2)]:
        res = VolumeRunner(FakeDetector(), axis=axis, intensity="minmax", resize_to_model=False, top_k=2).run(vol)
        assert res.source_dim == dim and res.n_slices == vol.shape[dim + 1]
        torch.testing.assert_close(res.anomaly_map.as_tensor(), (vol.as_tensor() > 0).float())
    res = VolumeRunner(FakeDetector(), axis="coronal", intensity="minmax", resize_to_model=False, top_k=2).run(vol)
    assert res.top_slices == [2, 3]  # fully bright coronal source rows
    # the fake scores the padded square: a bright 24x14 (Z x X... in-plane) slice padded to 24x24 -> 14/24
    assert res.slice_scores[2] == pytest.approx(14 / 24) and res.slice_scores[12] < 0.01


def test_batch_size_does_not_change_results():
    torch.manual_seed(0)
    vol = MetaTensor(torch.rand(1, 17, 13, 11) * 300, affine=_oblique_affine(), meta={"modality": "CT"})
    results = [VolumeRunner(FakeDetector(), batch_size=b, intensity="ct:soft_tissue").run(vol) for b in (1, 4, 64)]
    for r in results[1:]:
        torch.testing.assert_close(r.anomaly_map.as_tensor(), results[0].anomaly_map.as_tensor())
        np.testing.assert_allclose(r.slice_scores, results[0].slice_scores, rtol=1e-6)  # float reduction order only
        assert r.top_slices == results[0].top_slices
        assert r.volume_score == pytest.approx(results[0].volume_score, rel=1e-6)


def test_padding_resize_and_batches_seen_by_detector():
    det = FakeDetector()
    vol = MetaTensor(torch.rand(1, 30, 20, 5), meta={"modality": "MR"})  # identity affine: axial slices 30x20
    res = VolumeRunner(det, batch_size=2, intensity="mr").run(vol)
    assert det.shapes == [(2, 3, 240, 240), (2, 3, 240, 240), (1, 3, 240, 240)]  # square model input, streamed
    assert res.anomaly_map.shape == (1, 30, 20, 5)
    # no cropping: the map is non-zero up to the image borders
    assert float(res.anomaly_map[0, :, 0].abs().sum()) > 0 and float(res.anomaly_map[0, :, -1].abs().sum()) > 0
    assert float(res.anomaly_map.min()) >= 0.0 and float(res.anomaly_map.max()) <= 1.0
    det2 = FakeDetector()
    VolumeRunner(det2, resize_to_model=False).run(vol)
    assert det2.shapes == [(5, 3, 30, 30)]  # native size, padded to square


def test_three_ct_windows_and_volume_score_rules():
    hu = torch.full((1, 8, 8, 6), -1000.0)
    hu[0, 2:6, 2:6, 1] = 40.0
    hu[0, 2:6, 2:6, 4] = 1300.0
    vol = MetaTensor(hu, meta={"modality": "CT"})
    det = FakeDetector()
    res = VolumeRunner(det, intensity="ct:brain,soft_tissue,bone", resize_to_model=False, top_k=1).run(vol)
    # slice 1: brain 0.5, soft tissue 0.5, bone 540/1800 -> mean of channels; slice 4: 1, 1, 1
    np.testing.assert_allclose(res.anomaly_map[0, 3, 3, 1].item(), (0.5 + 0.5 + 0.3) / 3, atol=1e-6)
    np.testing.assert_allclose(res.anomaly_map[0, 3, 3, 4].item(), 1.0, atol=1e-6)
    assert res.top_slices == [4] and res.volume_score == pytest.approx(res.slice_scores[4])
    # air slices: under the brain window the whole slice is 0 -> skipped; with skip_empty=False all are scored
    assert res.skipped.tolist() == [True, False, True, True, False, True]
    res_all = VolumeRunner(FakeDetector(), intensity="ct:brain", skip_empty=False, volume_score="max").run(vol)
    assert not res_all.skipped.any() and res_all.volume_score == pytest.approx(res_all.slice_scores.max())


def test_auto_intensity_uses_modality():
    hu = torch.zeros(1, 6, 6, 3)
    hu[0, :3, :, :] = 80.0  # 0 and 80 HU
    ct = VolumeRunner(FakeDetector(), resize_to_model=False).run(MetaTensor(hu, meta={"modality": "CT"}))
    # default CT window (soft tissue, [-160, 240]): 0 HU -> 0.4, 80 HU -> 0.6
    np.testing.assert_allclose(ct.anomaly_map[0, 0, 0, 0].item(), 0.6, atol=1e-6)
    np.testing.assert_allclose(ct.anomaly_map[0, 5, 0, 0].item(), 0.4, atol=1e-6)
    mr = VolumeRunner(FakeDetector(), resize_to_model=False).run(MetaTensor(hu, meta={"modality": "MR"}))
    assert mr.anomaly_map[0, 0, 0, 0].item() == pytest.approx(1.0)


def test_run_2d():
    det = FakeDetector()
    png = torch.zeros(1, 40, 60, dtype=torch.uint8)
    png[0, 10:20, 30:40] = 255
    res = VolumeRunner(det, resize_to_model=False).run_2d(png)
    assert res.anomaly_map.shape == (1, 40, 60) and res.n_slices == 1 and res.axis is None
    torch.testing.assert_close(res.anomaly_map.as_tensor(), (png > 0).float())  # /255 for uint8 under "auto"
    assert det.shapes == [(1, 3, 60, 60)]
    rgb = np.random.default_rng(0).uniform(0, 1000, (3, 32, 32)).astype(np.float32)
    res = VolumeRunner(FakeDetector()).run_2d(rgb)
    assert res.anomaly_map.shape == (1, 32, 32) and res.slice_scores.shape == (1,)


def test_input_validation_messages():
    with pytest.raises(TypeError, match="predict"):
        VolumeRunner(object())
    with pytest.raises(ValueError, match="axis"):
        VolumeRunner(FakeDetector(), axis="oblique")
    with pytest.raises(ValueError, match="multi-channel"):
        VolumeRunner(FakeDetector()).run(torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="1 or 3 ranges|1 \\(gray\\) or 3"):
        VolumeRunner(FakeDetector(), intensity="ct:brain,bone").run(torch.rand(1, 4, 4, 4))
    # a plain [X, Y, Z] array works (identity affine)
    assert VolumeRunner(FakeDetector()).run(np.random.rand(5, 6, 7)).anomaly_map.shape == (1, 5, 6, 7)


def test_model_inputs_are_exactly_what_run_shows_the_detector():
    import medad
    from monai.data import MetaTensor

    from medad.inference import VolumeRunner

    class Recorder:
        image_size = 240

        def __init__(self):
            self.seen = []

        def predict(self, x):
            from types import SimpleNamespace

            self.seen.append(x.clone())
            return SimpleNamespace(anomaly_maps=torch.zeros(x.shape[0], *x.shape[-2:]), image_scores=torch.zeros(len(x)))

    vol = torch.zeros(1, 40, 30, 9)
    vol[0, 5:30, 5:25, 2:7] = torch.linspace(0, 100, 25)[:, None, None]  # slices 0,1,7,8 are empty
    affine = torch.diag(torch.tensor([-1.0, 1.0, 2.0, 1.0]))
    volume = MetaTensor(vol, affine=affine, meta={"modality": "MR"})
    rec = Recorder()
    runner = VolumeRunner(rec, batch_size=4)
    runner.run(volume)
    inputs, index = runner.model_inputs(volume)
    assert inputs.shape == (5, 3, 240, 240) and sorted(index.tolist()) == [2, 3, 4, 5, 6]
    torch.testing.assert_close(inputs, torch.cat(rec.seen))
    assert isinstance(inputs, torch.Tensor) and not isinstance(inputs, MetaTensor)
    det = medad.load_detector(backbone="tiny")
    det.fit_memory_bank(inputs[:2])
    assert type(det.memory_bank.seg) is torch.Tensor
