#!/usr/bin/env python
"""Regenerate the committed sample data (deterministic: same files on every run).

    python sample_data/make_sample_data.py            # writes next to this script
    python sample_data/make_sample_data.py --out DIR

Outputs (about 2 MB):
  ct_head_phantom/dicom/IM0001.dcm .. IM0032.dcm   CT series 128x128x32, 1.8x1.8x4 mm, HU = stored - 1024,
                                                  3 round lesions (hyper- and hypodense), PatientID ANON-PHANTOM
  ct_head_phantom/lesion_mask.nii.gz               uint8 ground truth on the same voxel grid as the loaded series
  mr_flair_phantom/image.nii.gz                    FLAIR-like brain MR 128x128x32, 1.7x1.7x4 mm, int16
  mr_flair_phantom/lesion_mask.nii.gz              uint8 ground truth
  manifest.json                                    seeds, shapes, lesion voxel counts, SHA-256 of every file

More phantoms (other seeds, held-out sets): ``medad.synthetic.make_ct_phantom`` / ``make_mr_phantom`` /
``write_dicom_series``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from medad.synthetic import make_ct_phantom, make_mr_phantom, write_dicom_series

CT_SEED = 20260101
MR_SEED = 20260102


def _save_nifti_deterministic(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """NIfTI-1 with sform/qform code 1, gzipped with mtime 0 so the bytes do not depend on the clock."""
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    path.write_bytes(buf.getvalue())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make(out: Path) -> dict:
    """Write all sample data under ``out`` and return the manifest."""
    ct_dir = out / "ct_head_phantom"
    mr_dir = out / "mr_flair_phantom"
    for d in (ct_dir, mr_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    hu, ct_mask, ct_affine = make_ct_phantom(CT_SEED, (128, 128, 32), n_lesions=3, region="head")
    write_dicom_series(hu, ct_affine, ct_dir / "dicom", seed=CT_SEED, modality="CT", body_part="HEAD",
                       series_description="Synthetic head CT phantom (3 lesions)",
                       study_description="medad sample data")
    _save_nifti_deterministic(ct_mask, ct_affine, ct_dir / "lesion_mask.nii.gz")

    mr, mr_mask, mr_affine = make_mr_phantom(MR_SEED, (128, 128, 32), n_lesions=3)
    _save_nifti_deterministic(mr.astype(np.int16), mr_affine, mr_dir / "image.nii.gz")
    _save_nifti_deterministic(mr_mask, mr_affine, mr_dir / "lesion_mask.nii.gz")

    files = sorted(p for p in out.rglob("*") if p.is_file() and p.parent != out)
    manifest = {
        "generator": "sample_data/make_sample_data.py (medad.synthetic.phantoms)",
        "ct_head_phantom": {"seed": CT_SEED, "shape": list(hu.shape), "spacing_mm": [1.8, 1.8, 4.0],
                            "lesion_voxels": int(ct_mask.sum()), "hu_range": [float(hu.min()), float(hu.max())],
                            "affine_ras": ct_affine.tolist()},
        "mr_flair_phantom": {"seed": MR_SEED, "shape": list(mr.shape), "spacing_mm": [1.7, 1.7, 4.0],
                             "lesion_voxels": int(mr_mask.sum()), "affine_ras": mr_affine.tolist()},
        "sha256": {str(p.relative_to(out)): _sha256(p) for p in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    m = make(ap.parse_args().out)
    print(f"wrote {len(m['sha256'])} files; CT lesion voxels {m['ct_head_phantom']['lesion_voxels']}, "
          f"MR lesion voxels {m['mr_flair_phantom']['lesion_voxels']}")


if __name__ == "__main__":
    main()
