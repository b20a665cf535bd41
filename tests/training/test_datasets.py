"""Dataset readers on generated MVFA / BMAD / MVTec layouts, loading, augmentation and their error messages."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medad.training.augment import NUM_AUGMENTATIONS, augment_support
from medad.datasets import (
    DatasetLayoutError,
    ImageMaskDataset,
    discover_datasets,
    fingerprint,
    load_batch,
    load_image,
    load_mask,
    read_dataset,
    sample_support,
)


def _png(path: Path, value: int = 100, size=(64, 48), square=None, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full(size[::-1], value, dtype=np.uint8)
    if square is not None:
        y0, y1, x0, x1 = square
        arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr, mode="L").convert(mode).save(path)


def _mvfa(root: Path, with_train=False, n_good=3, n_bad=2, mask_suffix=""):
    for split in ("valid", "test") + (("train",) if with_train else ()):
        for i in range(n_good):
            _png(root / split / "good" / "img" / f"g{i}.png", 40 + i)
        if split == "train":
            continue
        for i in range(n_bad):
            _png(root / split / "Ungood" / "img" / f"b{i}.png", 80 + i)
            _png(root / split / "Ungood" / "anomaly_mask" / f"b{i}{mask_suffix}.png", 0, square=(10, 20, 5, 30 + i))
    return root


def test_mvfa_layout_masks_matched_by_name(tmp_path):
    # the data root itself contains "img": a path string-replace would break, name matching does not
    root = _mvfa(tmp_path / "img_data" / "Brain_AD")
    ds = read_dataset(root)
    assert (ds.name, ds.layout, ds.object_name, ds.has_masks) == ("Brain", "mvfa", "Brain", True)
    assert ds.counts() == {"valid": (3, 2), "test": (3, 2)}
    bad = [s for s in ds.split("test") if s.label == 1]
    assert [s.mask.name for s in bad] == ["b0.png", "b1.png"]
    assert all(s.mask.parent.name == "anomaly_mask" for s in bad)
    with pytest.raises(DatasetLayoutError, match="split 'train' has no images"):
        ds.split("train")


def test_bmad_layout_with_train_and_mask_suffix(tmp_path):
    ds = read_dataset(_mvfa(tmp_path / "Liver_AD", with_train=True, mask_suffix="_mask"))
    assert ds.layout == "bmad" and ds.object_name == "Liver"
    assert ds.counts()["train"] == (3, 0)
    assert all(s.mask is not None for s in ds.split("valid") if s.label == 1)


def test_bmad_classification_layout_without_img(tmp_path):
    root = tmp_path / "OCT2017"
    for split in ("train", "valid", "test"):
        _png(root / split / "good" / "NORMAL-1-1.jpeg".replace(".jpeg", ".png"), 10)
        if split != "train":
            _png(root / split / "Ungood" / "CNV-2-1.png", 200)
    ds = read_dataset(root)
    assert ds.layout == "bmad" and not ds.has_masks and ds.object_name == "retinal OCT"
    assert ds.counts() == {"train": (1, 0), "valid": (1, 1), "test": (1, 1)}
    item = ImageMaskDataset(ds.split("test"), ds.has_masks, size=32)[1]
    assert item["label"] == 1 and not item["has_mask"] and item["mask"].sum() == 0


def test_mvtec_layout(tmp_path):
    root = tmp_path / "BrainMRI"
    _png(root / "train" / "good" / "000.png")
    _png(root / "test" / "good" / "000.png")
    for defect in ("tumor", "edema"):  # same stem '000' in two defect folders: matched within the folder
        _png(root / "test" / defect / "000.png", 150)
        _png(root / "ground_truth" / defect / "000_mask.png", 0, square=(0, 10, 0, 10 if defect == "tumor" else 20))
    ds = read_dataset(root)
    assert ds.layout == "mvtec" and ds.has_masks and ds.object_name == "Brain"
    bad = {s.image.parent.name: s.mask for s in ds.split("test") if s.label == 1}
    assert bad["tumor"].parent.name == "tumor" and bad["edema"].parent.name == "edema"
    m = load_mask(bad["edema"], size=48)
    assert m.shape == (1, 48, 48) and set(m.unique().tolist()) == {0.0, 1.0}


def test_missing_mask_error_names_the_file(tmp_path):
    root = _mvfa(tmp_path / "Brain_AD")
    (root / "test" / "Ungood" / "anomaly_mask" / "b1.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"1 abnormal image\(s\) in .*test/Ungood/img have no mask.*b1.png"):
        read_dataset(root)
    ds = read_dataset(root, strict_masks=False)
    assert [s.mask is None for s in ds.split("test") if s.label == 1] == [False, True]


def test_not_a_dataset_and_empty_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetLayoutError, match="not a dataset folder"):
        read_dataset(tmp_path / "random")
    (tmp_path / "Empty_AD" / "test" / "good" / "img").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="contains no images"):
        read_dataset(tmp_path / "Empty_AD")
    with pytest.raises(DatasetLayoutError, match="no dataset found"):
        discover_datasets(tmp_path)


def test_discover_several_and_fingerprint(tmp_path):
    _mvfa(tmp_path / "Brain_AD")
    _mvfa(tmp_path / "Liver_AD")
    found = discover_datasets(tmp_path)
    assert [d.name for d in found] == ["Brain", "Liver"]
    f1 = fingerprint(found[0].split("test"), found[0].root)
    assert f1 == fingerprint(found[0].split("test"), found[0].root) and len(f1) == 64
    _png(found[0].root / "test" / "good" / "img" / "g9.png")
    assert fingerprint(read_dataset(found[0].root).split("test"), found[0].root) != f1


def test_load_image_and_support(tmp_path):
    root = _mvfa(tmp_path / "Brain_AD", n_good=5, n_bad=4)
    x = load_image(root / "test" / "good" / "img" / "g0.png", size=240)
    assert x.shape == (3, 240, 240) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 40 / 255), atol=1e-6)
    ds = read_dataset(root)
    support, rest = sample_support(ds.split("valid"), k=2, seed=3)
    assert sum(s.label == 0 for s in support) == 2 and sum(s.label == 1 for s in support) == 2
    assert len(rest) == 5 and not set(rest) & set(support)
    assert sample_support(ds.split("valid"), k=2, seed=3)[0] == support
    normal_only, _ = sample_support(ds.split("valid"), k=3, abnormal=False)
    assert len(normal_only) == 3 and all(s.label == 0 for s in normal_only)
    with pytest.raises(DatasetLayoutError, match="k=9-shot"):
        sample_support(ds.split("valid"), k=9)
    images, masks, labels = load_batch(support, size=64)
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 1, 64, 64) and labels.tolist() == [0, 0, 1, 1]
    assert masks[:2].sum() == 0 and (masks[2:].sum((1, 2, 3)) > 0).all()


def test_augment_support_masks_follow():
    x = torch.zeros(2, 3, 64, 64)
    m = torch.zeros(2, 1, 64, 64)
    x[:, :, 10:20, 40:50] = 1.0
    m[:, :, 10:20, 40:50] = 1.0
    ai, am = augment_support(x, m)
    assert NUM_AUGMENTATIONS == 11 and ai.shape == (22, 3, 64, 64) and am.shape == (22, 1, 64, 64)
    assert set(am.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(ai[:2], x) and torch.equal(am[:2], m)
    assert torch.equal(am[18:20], m.flip(-1)) and torch.equal(am[20:22], m.flip(-2))
    # every augmented mask still covers the bright square of its image
    bright = (ai[:, 0:1] > 0.5).float()
    inter = (bright * am).sum((1, 2, 3)) / am.sum((1, 2, 3))
    assert (inter > 0.8).all()
    # the 8 resampled views all differ from the identity
    assert all(not torch.equal(am[2 * a], m[0]) for a in range(1, 9))
    only, none = augment_support(x)
    assert only.shape == (22, 3, 64, 64) and none is None
    with pytest.raises(ValueError, match="do not match"):
        augment_support(x, m[:1])
