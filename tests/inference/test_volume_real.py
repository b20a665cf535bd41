"""VolumeRunner with the real (tiny, random-init) detector: synthetic volume and a real BraTS FLAIR volume."""

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import medad
from medad.inference import VolumeRunner

SHARED = Path(__file__).resolve().parents[2].parent / "shared"  # ../shared next to the repository
BRATS = sorted(glob.glob(str(SHARED / "data/brats2015_subset/nifti/*/*/Flair_subtrMeanDivStd.nii.gz")))


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    return medad.load_detector(backbone="tiny")


def test_tiny_detector_synthetic_volume_geometry_and_batch_invariance(det):
    g = torch.Generator().manual_seed(0)
    arr = torch.zeros(1, 48, 10, 7)
    arr[0, 6:42, 3:8, 1:6] = torch.rand(36, 5, 5, generator=g) * 400 + 100
    aff = torch.tensor([[0.0, 0.0, -3.0, 20.0], [-0.9, 0.0, 0.0, 5.0], [0.0, 0.9, 0.0, -7.0], [0, 0, 0, 1]],
                       dtype=torch.float64)  # axial = source dim 1 (flipped/permuted storage)
    vol = MetaTensor(arr, affine=aff, meta={"modality": "MR"})
    r1 = VolumeRunner(det, batch_size=2, top_k=3).run(vol)
    r4 = VolumeRunner(det, batch_size=5, top_k=3).run(vol)
    assert r1.anomaly_map.shape == vol.shape and r1.anomaly_map.dtype == torch.float32
    torch.testing.assert_close(r1.anomaly_map.affine, vol.affine)
    assert r1.source_dim == 1 and r1.n_slices == 10
    assert float(r1.anomaly_map.min()) >= 0.0 and float(r1.anomaly_map.max()) <= 1.0
    # background-only slices (source dim1 outside 3..7) are skipped and stay 0
    assert np.array_equal(np.flatnonzero(~r1.skipped), np.arange(3, 8))
    assert float(r1.anomaly_map[0, :, :3].abs().max()) == 0.0
    torch.testing.assert_close(r4.anomaly_map.as_tensor(), r1.anomaly_map.as_tensor(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(r4.slice_scores, r1.slice_scores, atol=1e-4)
    assert np.isfinite(r1.volume_score) and len(r1.top_slices) == 3 and set(r1.top_slices) <= set(range(3, 8))
    # a 2D image through the same detector
    r2d = VolumeRunner(det).run_2d(arr[0, :, 5, :].T[None])
    assert r2d.anomaly_map.shape == (1, 7, 48) and np.isfinite(r2d.volume_score)
    r1.anomaly_map.mul_(1.0), r2d.anomaly_map.mul_(1.0)  # plain tensors, editable in place (no inference-mode tensors)


@pytest.mark.skipif(not BRATS, reason="BraTS subset not present in ../shared/data/brats2015_subset")
def test_brats_flair_volume_map_in_source_geometry(det):
    from monai.transforms import LoadImage

    vol = LoadImage(image_only=True, ensure_channel_first=True)(BRATS[0])  # [1, 240, 240, 155], LPS-stored
    vol.meta["modality"] = "MR"
    res = VolumeRunner(det, batch_size=32, view="brats_png").run(vol)
    assert tuple(res.anomaly_map.shape) == tuple(vol.shape) == (1, 240, 240, 155)
    torch.testing.assert_close(res.anomaly_map.affine, vol.affine)
    assert res.source_dim == 2 and res.n_slices == 155
    assert 0 < int(res.skipped.sum()) < 155  # empty slices above/below the head are skipped
    skipped = np.flatnonzero(res.skipped)
    assert float(res.anomaly_map[0, :, :, skipped].abs().max()) == 0.0
    assert float(res.anomaly_map.max()) > 0.0
    assert np.isfinite(res.volume_score) and len(res.top_slices) == 5
