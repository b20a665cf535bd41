"""Readers for the anomaly-detection benchmark layouts (MVFA, BMAD, MVTec-style) and image/mask loading.

Supported layouts (``<root>`` is one dataset, e.g. ``Brain_AD``)::

    MVFA      <root>/{valid,test}/{good,Ungood}/img/*.png      <root>/{split}/Ungood/anomaly_mask/*.png
    BMAD      as MVFA plus <root>/train/good/img; classification sets without img/:
              <root>/{train,valid,test}/{good,Ungood}/*.png
    MVTec     <root>/train/good/*.png   <root>/test/{good,<defect>}/*.png
              <root>/ground_truth/<defect>/<stem>[_mask].png

Masks are found by matching the image's file name (its stem, with an optional ``_mask`` suffix) among the mask files
that belong to the same split and class folder. Paths are never string-replaced. Mask folder names accepted:
``anomaly_mask``, ``label``, ``mask``, ``masks``, ``ground_truth``.

Images are read as RGB, resized bicubic to ``size`` (240) and scaled to [0, 1] (no CLIP mean/std, as in MVFA);
masks are read as grayscale, resized nearest and binarized at 0.5 (of the [0, 1] range).
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "MASK_DIR_NAMES",
    "OBJECT_NAMES",
    "DatasetLayoutError",
    "Sample",
    "ADDataset",
    "read_dataset",
    "discover_datasets",
    "load_image",
    "load_mask",
    "ImageMaskDataset",
    "load_batch",
    "sample_support",
    "fingerprint",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_DIR_NAMES = ("anomaly_mask", "label", "mask", "masks", "ground_truth")
NORMAL_DIRS = ("good", "normal", "Normal")
ABNORMAL_DIRS = ("Ungood", "ungood", "bad", "abnormal", "Abnormal")
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}

#: Text-prompt object names used by the MVFA paper, keyed by the dataset names of MVFA, BMAD and UniVAD.
OBJECT_NAMES = {
    "brain": "Brain",
    "brainmri": "Brain",
    "liver": "Liver",
    "liverct": "Liver",
    "retina_resc": "retinal OCT",
    "resc": "retinal OCT",
    "retina_oct2017": "retinal OCT",
    "oct2017": "retinal OCT",
    "oct17": "retinal OCT",
    "chest": "Chest X-ray film",
    "chestxray": "Chest X-ray film",
    "rsna": "Chest X-ray film",
    "histopathology": "histopathological image",
    "his": "histopathological image",
    "camelyon16": "histopathological image",
}


class DatasetLayoutError(ValueError):
    """A dataset folder does not have the expected layout (missing split, no images, missing masks)."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split.

    Attributes:
        image: path of the image file.
        label: 0 normal, 1 abnormal.
        mask: path of the binary mask (abnormal images of segmentation datasets) or None (normal images are all-zero).
    """

    image: Path
    label: int
    mask: Path | None = None


@dataclass
class ADDataset:
    """One anomaly-detection dataset (one organ/object) with its splits.

    Attributes:
        name: dataset name (folder name without a trailing ``_AD``), e.g. ``Brain``.
        root: dataset folder.
        layout: ``"mvfa"``, ``"bmad"`` or ``"mvtec"``.
        object_name: the word used in the text prompts (e.g. ``"Brain"``, ``"retinal OCT"``).
        has_masks: True when abnormal images come with pixel masks (segmentation dataset).
        splits: split name (``train``/``valid``/``test``) -> samples, sorted by path.
    """

    name: str
    root: Path
    layout: str
    object_name: str
    has_masks: bool
    splits: dict[str, list[Sample]] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """Samples of split ``name``; raises :class:`DatasetLayoutError` when the split is absent or empty."""
        samples = self.splits.get(name)
        if not samples:
            have = ", ".join(f"{k} ({len(v)} images)" for k, v in self.splits.items()) or "none"
            raise DatasetLayoutError(
                f"dataset '{self.name}' at {self.root}: split '{name}' has no images (splits found: {have}). "
                f"Expected {self.root}/{name}/good/... and/or {self.root}/{name}/Ungood/... with image files "
                f"({', '.join(IMAGE_EXTENSIONS)})."
            )
        return samples

    def counts(self) -> dict[str, tuple[int, int]]:
        """Split -> (number of normal, number of abnormal) images."""
        return {k: (sum(s.label == 0 for s in v), sum(s.label == 1 for s in v)) for k, v in self.splits.items()}


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _mask_key(path: Path) -> str:
    stem = path.stem
    for suffix in ("_mask", "-mask", "_label", "_seg"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _index_masks(folders: Sequence[Path]) -> dict[str, Path]:
    """Stem -> mask path over ``folders`` (a stem seen twice with different files is an error)."""
    index: dict[str, Path] = {}
    for folder in folders:
        for p in _images_in(folder):
            key = _mask_key(p)
            if key in index and index[key] != p:
                raise DatasetLayoutError(
                    f"two mask files match the image name '{key}': {index[key]} and {p}. "
                    "Keep one mask per image name in a split."
                )
            index[key] = p
    return index


def _match_masks(images: list[Path], mask_index: dict[str, Path], where: Path, strict: bool) -> list[Path | None]:
    masks: list[Path | None] = []
    missing: list[str] = []
    for img in images:
        m = mask_index.get(img.stem)
        if m is None:
            missing.append(img.name)
        masks.append(m)
    if missing and strict:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetLayoutError(
            f"{len(missing)} abnormal image(s) in {where} have no mask with the same file name: {shown}. "
            "Add the masks (same name as the image, optional '_mask' suffix) to the mask folder, remove those "
            "images, or read the dataset with strict_masks=False to use them without masks (image-level only)."
        )
    return masks


def _find_split_dir(root: Path, split: str) -> Path | None:
    for alias in SPLIT_ALIASES[split]:
        if (root / alias).is_dir():
            return root / alias
    return None


def _class_dirs(split_dir: Path, names: Sequence[str]) -> list[Path]:
    return [split_dir / n for n in names if (split_dir / n).is_dir()]


def _read_split_mvfa_bmad(split_dir: Path, strict_masks: bool) -> tuple[list[Sample], bool]:
    """Read ``split_dir/{good,Ungood}[/img]``; returns samples and whether a mask folder exists."""
    samples: list[Sample] = []
    has_mask_dir = False
    for cls_dir, label in [(d, 0) for d in _class_dirs(split_dir, NORMAL_DIRS)] + [
        (d, 1) for d in _class_dirs(split_dir, ABNORMAL_DIRS)
    ]:
        img_dir = cls_dir / "img" if (cls_dir / "img").is_dir() else cls_dir
        images = _images_in(img_dir)
        mask_dirs = [cls_dir / n for n in MASK_DIR_NAMES if (cls_dir / n).is_dir()]
        if label == 1 and mask_dirs:
            has_mask_dir = True
            masks = _match_masks(images, _index_masks(mask_dirs), img_dir, strict_masks)
        else:
            masks = [None] * len(images)
        samples += [Sample(i, label, m) for i, m in zip(images, masks)]
    return samples, has_mask_dir


def _read_split_mvtec(root: Path, split_dir: Path, strict_masks: bool) -> tuple[list[Sample], bool]:
    samples: list[Sample] = []
    has_mask_dir = False
    gt_root = root / "ground_truth"
    for cls_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        label = 0 if cls_dir.name in NORMAL_DIRS else 1
        images = _images_in(cls_dir)
        masks: list[Path | None] = [None] * len(images)
        if label == 1 and (gt_root / cls_dir.name).is_dir():
            has_mask_dir = True
            masks = _match_masks(images, _index_masks([gt_root / cls_dir.name]), cls_dir, strict_masks)
        samples += [Sample(i, label, m) for i, m in zip(images, masks)]
    return samples, has_mask_dir


def _detect_layout(root: Path) -> str:
    if (root / "ground_truth").is_dir():
        return "mvtec"
    for split in ("train", "valid", "test"):
        split_dir = _find_split_dir(root, split)
        if split_dir is None:
            continue
        for cls in _class_dirs(split_dir, NORMAL_DIRS + ABNORMAL_DIRS):
            if (cls / "img").is_dir():
                return "bmad" if split == "train" or (root / "train").is_dir() else "mvfa"
        if _class_dirs(split_dir, NORMAL_DIRS + ABNORMAL_DIRS):
            return "bmad"
        if split == "test" and any(p.is_dir() for p in split_dir.iterdir()):
            return "mvtec"
    raise DatasetLayoutError(
        f"{root} is not a dataset folder: expected {root}/{{train,valid,test}}/{{good,Ungood}}[/img]/*.png "
        f"(MVFA/BMAD) or {root}/{{train,test,ground_truth}} (MVTec-style). Point --data at e.g. '.../Brain_AD'."
    )


def _dataset_name(root: Path) -> str:
    name = root.name
    return name[:-3] if name.endswith("_AD") else name


def default_object_name(name: str) -> str:
    """Prompt object name for a dataset name (``Brain_AD``/``BrainMRI`` -> ``Brain``); unknown names: themselves."""
    key = name.lower()
    key = key[:-3] if key.endswith("_ad") else key
    return OBJECT_NAMES.get(key, name[:-3] if name.endswith("_AD") else name)


def read_dataset(root: str | Path, object_name: str | None = None, strict_masks: bool = True) -> ADDataset:
    """Read one dataset folder in the MVFA, BMAD or MVTec-style layout.

    Args:
        root: dataset folder (e.g. ``.../Brain_AD``).
        object_name: prompt object name; default from the folder name (:data:`OBJECT_NAMES`).
        strict_masks: in a dataset that has mask folders, raise when an abnormal image has no mask.

    Raises:
        DatasetLayoutError: not a dataset folder, no images in any split, or missing masks (``strict_masks``).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist or is not a folder.")
    layout = _detect_layout(root)
    splits: dict[str, list[Sample]] = {}
    has_masks = False
    for split in ("train", "valid", "test"):
        split_dir = _find_split_dir(root, split)
        if split_dir is None:
            continue
        if layout == "mvtec":
            samples, masks_here = _read_split_mvtec(root, split_dir, strict_masks)
        else:
            samples, masks_here = _read_split_mvfa_bmad(split_dir, strict_masks)
        has_masks |= masks_here
        if samples:
            splits[split] = samples
    if not splits:
        raise DatasetLayoutError(
            f"dataset folder {root} ({layout} layout) contains no images: expected image files "
            f"({', '.join(IMAGE_EXTENSIONS)}) under {root}/<split>/good and <split>/Ungood."
        )
    name = _dataset_name(root)
    ds = ADDataset(name, root, layout, object_name or default_object_name(root.name), has_masks, splits)
    logger.info("dataset %s (%s layout, masks=%s): %s", name, layout, has_masks, ds.counts())
    return ds


def discover_datasets(root: str | Path, strict_masks: bool = True) -> list[ADDataset]:
    """All datasets under ``root``: ``root`` itself when it is a dataset folder, else its dataset sub-folders."""
    root = Path(root).expanduser()
    try:
        return [read_dataset(root, strict_masks=strict_masks)]
    except DatasetLayoutError as err:
        if not root.is_dir():
            raise
        first_error = err
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            found.append(read_dataset(sub, strict_masks=strict_masks))
        except DatasetLayoutError as err:
            if "have no mask" in str(err) or "two mask files" in str(err):
                raise
            logger.debug("skipping %s: %s", sub, err)
    if not found:
        raise DatasetLayoutError(f"no dataset found in {root} or its sub-folders. {first_error}")
    return found


def load_image(path: str | Path, size: int = 240) -> torch.Tensor:
    """Image file -> float32 RGB tensor [3, size, size] in [0, 1] (bicubic resize, as MVFA's PIL pipeline)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_mask(path: str | Path | None, size: int = 240) -> torch.Tensor:
    """Mask file -> float32 binary tensor [1, size, size] (nearest resize, > 0.5); None gives all zeros."""
    if path is None:
        return torch.zeros(1, size, size)
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), Image.NEAREST)
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr > 0.5).float()[None]


class ImageMaskDataset(Dataset):
    """Torch dataset over :class:`Sample` s: items are dicts with

    ``image`` [3,S,S] float in [0,1], ``mask`` [1,S,S] float {0,1}, ``label`` int, ``has_mask`` bool, ``index`` int.

    Args:
        samples: the samples.
        has_masks: whether the dataset provides masks (normal images then count as all-zero masks).
        size: working resolution.
        cache: keep decoded tensors in memory after the first read.
    """

    def __init__(self, samples: Sequence[Sample], has_masks: bool, size: int = 240, cache: bool = False):
        self.samples = list(samples)
        self.has_masks = has_masks
        self.size = size
        self.cache = cache
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        if i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        item = {
            "image": load_image(s.image, self.size),
            "mask": load_mask(s.mask, self.size),
            "label": int(s.label),
            "has_mask": bool(self.has_masks and (s.label == 0 or s.mask is not None)),
            "index": i,
        }
        if self.cache:
            self._cache[i] = item
        return item


def load_batch(samples: Sequence[Sample], size: int = 240) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load samples into (images [N,3,S,S], masks [N,1,S,S], labels [N] long)."""
    if not samples:
        return torch.zeros(0, 3, size, size), torch.zeros(0, 1, size, size), torch.zeros(0, dtype=torch.long)
    images = torch.stack([load_image(s.image, size) for s in samples])
    masks = torch.stack([load_mask(s.mask, size) for s in samples])
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return images, masks, labels


def sample_support(
    samples: Sequence[Sample], k: int, seed: int = 0, abnormal: bool = True, require_masks: bool = False
) -> tuple[list[Sample], list[Sample]]:
    """Draw a k-shot support set: k normal and (if ``abnormal``) k abnormal samples.

    Returns ``(support, rest)``: ``rest`` is every other sample (used for validation-based model selection).
    Raises :class:`DatasetLayoutError` when the pool has fewer than k of a class.
    """
    rng = random.Random(seed)
    normals = [s for s in samples if s.label == 0]
    abnormals = [s for s in samples if s.label == 1 and (s.mask is not None or not require_masks)]
    if len(normals) < k or (abnormal and len(abnormals) < k):
        raise DatasetLayoutError(
            f"k={k}-shot support needs {k} normal{' and ' + str(k) + ' abnormal' if abnormal else ''} images; "
            f"the pool has {len(normals)} normal and {len(abnormals)} abnormal. Use a smaller k or a larger split."
        )
    support = rng.sample(normals, k) + (rng.sample(abnormals, k) if abnormal else [])
    chosen = set(support)
    return support, [s for s in samples if s not in chosen]


def fingerprint(samples: Sequence[Sample], root: Path | None = None) -> str:
    """SHA-256 over (relative path, size, label, mask path) of the samples: identifies the data a model saw."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.image)):
        rel = s.image.relative_to(root) if root is not None and s.image.is_relative_to(root) else s.image.name
        h.update(f"{rel}|{s.image.stat().st_size}|{s.label}|{s.mask.name if s.mask else ''}\n".encode())
    return h.hexdigest()
