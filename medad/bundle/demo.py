"""Demo data the bundle makes for itself (``initialize`` of its configs, default ``dataset_dir`` only): synthetic
volumes for inference and a small MVFA-layout slice dataset for training/evaluation, from :mod:`medad.synthetic`
phantoms. No patient data; nothing here is meant for anything but trying the bundle.

Both makers are idempotent: a folder already made with the same parameters is kept (a ``.demo.json`` marker records
them); otherwise it is built in a temporary sibling folder and moved into place, so a half-written demo folder is
never used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["make_demo_volumes", "make_demo_dataset"]

log = logging.getLogger(__name__)

_MARKER = ".demo.json"


def _build_once(out: Path, params: dict, build: Callable[[Path], dict]) -> Path:
    """Make ``out`` with ``build(tmp_dir) -> summary`` unless it already holds a build with the same ``params``."""
    marker = out / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("params") == params:
                return out
        except ValueError:
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        summary = build(tmp)
        (tmp / _MARKER).write_text(json.dumps({"params": params, "summary": summary}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote demo data %s: %s", out, summary)
    return out


def make_demo_volumes(root: str | os.PathLike, shape: tuple[int, int, int] = (128, 128, 32),
                      seed: int = 20260101) -> Path:
    """Write two phantom volumes under ``root`` (the bundle's default inference input) unless they are there.

    * ``ct_head_phantom/dicom/IM*.dcm``: a head-CT phantom with 3 lesions as a DICOM series
      (:func:`medad.synthetic.make_ct_phantom`, :func:`medad.synthetic.write_dicom_series`);
    * ``mr_flair_phantom/image.nii.gz``: a FLAIR-like brain MR phantom with 3 lesions (int16 NIfTI,
      :func:`medad.synthetic.make_mr_phantom`);

    each with its ground truth as ``lesion_mask.nii.gz`` next to it (the inference config's ``*mask*`` exclude
    pattern leaves those out). Same recipe as the repository's ``sample_data/`` (other seeds allowed).

    Returns:
        ``root``.
    """
    import nibabel as nib

    from ..synthetic import make_ct_phantom, make_mr_phantom, write_dicom_series

    shape = tuple(int(s) for s in shape)

    def build(tmp: Path) -> dict:
        hu, ct_mask, ct_affine = make_ct_phantom(seed, shape, n_lesions=3, region="head")
        write_dicom_series(hu, ct_affine, tmp / "ct_head_phantom" / "dicom", seed=seed, modality="CT",
                           body_part="HEAD", series_description="Synthetic head CT phantom (3 lesions)",
                           study_description="medad bundle demo data")
        nib.save(nib.Nifti1Image(ct_mask, ct_affine), tmp / "ct_head_phantom" / "lesion_mask.nii.gz")
        mr, mr_mask, mr_affine = make_mr_phantom(seed + 1, shape, n_lesions=3)
        (tmp / "mr_flair_phantom").mkdir(parents=True)
        nib.save(nib.Nifti1Image(mr.astype(np.int16), mr_affine), tmp / "mr_flair_phantom" / "image.nii.gz")
        nib.save(nib.Nifti1Image(mr_mask, mr_affine), tmp / "mr_flair_phantom" / "lesion_mask.nii.gz")
        return {"ct_lesion_voxels": int(ct_mask.sum()), "mr_lesion_voxels": int(mr_mask.sum())}

    return _build_once(Path(root), {"kind": "volumes", "shape": list(shape), "seed": int(seed)}, build)


def _slices(vol: torch.Tensor, affine: np.ndarray, ranges, view: str, size: int, mode: str) -> torch.Tensor:
    """Axial RAS slices of ``vol [X, Y, Z]`` scaled by ``ranges`` (None: as is), in ``view`` layout, padded to a
    square and resized to ``size`` like :class:`~medad.inference.runner.VolumeRunner` does -> ``[Z, size, size]``."""
    from ..transforms import VIEWS, RASSlicer, apply_ranges, square_pad_width

    slicer = RASSlicer(tuple(vol.shape), affine, "axial", "RAS")
    x = slicer.read(vol, 0, slicer.n_slices)
    if ranges is not None:
        x = apply_ranges(x, ranges)
    x = VIEWS[view][0](x).float()
    (t, b), (left, right) = square_pad_width(tuple(x.shape[-2:]))
    x = F.pad(x[:, None], (left, right, t, b))
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")[:, 0]
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[:, 0].clamp(0, 1)


def make_demo_dataset(root: str | os.PathLike, name: str = "Brain_AD", seed: int = 0, n_volumes: int = 2,
                      shape: tuple[int, int, int] = (96, 96, 20), min_lesion_px: int = 40,
                      view: str = "radiological", size: int = 240) -> Path:
    """Write a small MVFA-layout dataset of synthetic FLAIR-like phantom slices (``medad.synthetic.make_mr_phantom``)
    unless it is there: ``<root>/<name>/{valid,test}/{good,Ungood}/img/*.png`` and ``Ungood/anomaly_mask/*.png``.

    Volume ``i`` (seed ``seed + i``) goes to ``valid`` for the first half of ``n_volumes`` and to ``test`` for the
    rest (a patient-level split). Axial slices are scaled with the MR rule of the volume runner
    (``medad.transforms.make_intensity("mr")``), shown in ``view`` and resized to ``size``; a slice is ``Ungood`` with
    at least ``min_lesion_px`` lesion pixels, ``good`` with none and some anatomy, else left out. For trying the
    train/evaluate configs only: the phantoms are not real anatomy.

    Returns:
        ``<root>/<name>``.
    """
    from monai.data import MetaTensor
    from PIL import Image

    from ..synthetic import make_mr_phantom
    from ..transforms import make_intensity

    if n_volumes < 2:
        raise ValueError("n_volumes must be >= 2 (at least one volume for valid and one for test)")
    shape = tuple(int(s) for s in shape)

    def build(out: Path) -> dict:
        intensity = make_intensity("mr")
        counts: dict[str, int] = {}
        for i in range(n_volumes):
            split = "valid" if i < n_volumes // 2 else "test"
            img, mask, affine = make_mr_phantom(seed + i, shape)
            vol = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
            ranges = intensity.ranges(MetaTensor(vol[None], affine=torch.as_tensor(affine), meta={"modality": "MR"}))
            slices = _slices(vol, affine, ranges, view, size, "bicubic")
            masks = _slices(torch.from_numpy(mask.astype(np.float32)), affine, None, view, size, "nearest") > 0.5
            for z in range(slices.shape[0]):
                lesion = int(masks[z].sum())
                anatomy = float((slices[z] > 0.1).float().mean())
                if lesion >= min_lesion_px:
                    cls = "Ungood"
                elif lesion == 0 and anatomy > 0.2:
                    cls = "good"
                else:
                    continue
                stem = f"phantom{seed + i:03d}_z{z:03d}"
                (out / split / cls / "img").mkdir(parents=True, exist_ok=True)
                Image.fromarray((slices[z].numpy() * 255).round().astype(np.uint8)).save(
                    out / split / cls / "img" / f"{stem}.png")
                if cls == "Ungood":
                    (out / split / cls / "anomaly_mask").mkdir(parents=True, exist_ok=True)
                    Image.fromarray(masks[z].numpy().astype(np.uint8) * 255).save(
                        out / split / cls / "anomaly_mask" / f"{stem}.png")
                counts[f"{split}/{cls}"] = counts.get(f"{split}/{cls}", 0) + 1
        missing = [k for k in ("valid/good", "valid/Ungood", "test/good", "test/Ungood") if not counts.get(k)]
        if missing:
            raise ValueError(f"the phantoms gave no {missing} slices; use more volumes or another seed")
        return counts

    params = {"kind": "mvfa_slices", "name": name, "seed": int(seed), "n_volumes": int(n_volumes), "shape": list(shape),
              "min_lesion_px": int(min_lesion_px), "view": view, "size": int(size)}
    return _build_once(Path(root) / name, params, build)
