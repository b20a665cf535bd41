#!/usr/bin/env python
"""Calibrate the embedded demo model: calibrated scores + an operating point at 95 % specificity + grading thresholds,
fitted on normal (lesion-free) CT head and MR brain phantoms never used for training, model selection or the
held-out check, and stored in the demo asset (the last step of ``scripts/train_demo_model.py``).

    python scripts/calibrate_demo_model.py                  # recalibrates medad/assets/demo-tiny-phantom.pt in place
    python scripts/calibrate_demo_model.py --out /tmp/x.pt  # writes a calibrated copy instead

The calibration studies are ``medad.synthetic`` phantoms with seeds :data:`CAL_SEEDS` (20 CT + 20 MR, no lesions),
scored with the default ``medad score`` settings (``VolumeRunner`` defaults: axial, intensity auto, top-5 mean). See
:mod:`medad.evaluation.calibration` for what is fitted and the guarantee (it holds for normal phantoms exchangeable
with these, not for real patients: DEMO WEIGHTS, NOT FOR CLINICAL USE).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

import medad
from medad.checkpoints import save_checkpoint
from medad.evaluation.calibration import calibrate
from medad.synthetic.phantoms import make_ct_phantom, make_mr_phantom

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "medad" / "assets" / "demo-tiny-phantom.pt"
#: Normal calibration phantoms: disjoint from training (1000...), validation (2000...) and held-out (3000...) seeds.
CAL_SEEDS = range(4000, 4020)
SPECIFICITY = 0.95


def _normal(maker, seed: int, modality: str) -> MetaTensor:
    img, _, aff = maker(seed, n_lesions=0)
    return MetaTensor(torch.as_tensor(img, dtype=torch.float32)[None], affine=torch.as_tensor(aff),
                      meta={"modality": modality})


def calibrate_demo(det, seeds=CAL_SEEDS, specificity: float = SPECIFICITY) -> dict:
    """Fit ``det``'s calibration and grading thresholds on normal CT + MR phantoms; returns the summary."""
    studies = [lambda m=maker, s=seed, mod=modality: _normal(m, s, mod)
               for seed in seeds for maker, modality in ((make_ct_phantom, "CT"), (make_mr_phantom, "MR"))]
    keys = [f"{modality}-{seed}" for seed in seeds for modality in ("CT", "MR")]
    report = calibrate(det, studies, specificity=specificity, keys=keys, batch_size=32)
    return {**report.summary(), "seeds": list(seeds), "studies": "normal CT head + MR brain phantoms",
            "volume_scores": {k: round(v, 6) for k, v in zip(report.keys, report.volume_scores)}}


def write_sums(asset: Path) -> None:
    """Record the asset's SHA-256 in ``medad/assets/SHA256SUMS`` (checked by ``load_detector(adapters="demo")``)."""
    sums = asset.parent / "SHA256SUMS"
    lines = [ln for ln in (sums.read_text().splitlines() if sums.is_file() else []) if ln.strip()
             and ln.split()[1] != asset.name]
    lines.append(f"{hashlib.sha256(asset.read_bytes()).hexdigest()}  {asset.name}")
    sums.write_text("\n".join(sorted(lines, key=lambda s: s.split()[1])) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapters", default=str(ASSET), help="checkpoint to calibrate (default: the demo asset)")
    p.add_argument("--out", default=None, help="output checkpoint (default: overwrite --adapters)")
    p.add_argument("--specificity", type=float, default=SPECIFICITY)
    args = p.parse_args(argv)
    src = Path(args.adapters)
    out = Path(args.out) if args.out else src
    t0 = time.time()
    det = medad.load_detector(adapters=src, precision="fp32")
    summary = calibrate_demo(det, specificity=args.specificity)
    prov = {**det.metadata, "calibration": {k: v for k, v in summary.items() if k != "volume_scores"}}
    save_checkpoint(det, out, extra=prov, include_backbone=True)
    if out.resolve() == ASSET.resolve():
        write_sums(out)
    scores = np.array(list(summary["volume_scores"].values()))
    print(json.dumps({k: v for k, v in summary.items() if k != "volume_scores"}, indent=1))
    print(f"raw volume scores of the normal studies: {scores.min():.4f}..{scores.max():.4f}; saved {out} "
          f"in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
