"""``medad calibrate NORMAL... --adapters A.pt --out A_calibrated.pt``: fit the score calibration and the operating
point on normal-only studies and store them with the adapters.

See :mod:`medad.evaluation.calibration` and :class:`medad.model.options.Calibration` for what is fitted and the
guarantee (false-positive rate over normal studies exchangeable with the calibration studies).
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "calibrate", help="fit calibrated scores + an operating point on normal studies (stored with the adapters)",
        description="Score normal-only validation studies (DICOM series / NIfTI volumes under NORMAL, no findings, "
                    "not used for training) with the settings `medad score` will use, and write a checkpoint with "
                    "the adapters plus: calibrated scores in [0, 1] (normal-population percentile), the operating "
                    "point at --specificity (a split-conformal threshold: over normal studies exchangeable with "
                    "these, the false-positive rate is at most (n+1-m)/(n+1) <= 1 - specificity) and, unless "
                    "--keep-thresholds, grading thresholds from voxel quantiles of the normal maps.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="NORMAL", help="folders/files of normal studies")
    p.add_argument("--out", "-o", required=True, help="output checkpoint (.pt)")
    p.add_argument("--adapters", default="demo", help="adapter checkpoint to calibrate, or 'demo'")
    p.add_argument("--backbone", default=None, help="'ViT-L-14-336' or 'tiny' (default: the checkpoint's)")
    p.add_argument("--weights", default=None, help="backbone weights file (default: the imported cache file)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--specificity", type=float, default=0.95, help="target specificity of the operating point")
    p.add_argument("--grade-quantiles", default="0.99,0.999,0.9999",
                   help="voxel quantiles of normal maps that become the grading thresholds (low,mid,high)")
    p.add_argument("--keep-thresholds", action="store_true", help="keep the checkpoint's grading thresholds")
    r = p.add_argument_group("scoring settings (must match `medad score`)")
    r.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"])
    r.add_argument("--intensity", default="auto")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from ..evaluation.calibration import calibrate_adapters

    quantiles = None if args.keep_thresholds else [float(v) for v in args.grade_quantiles.split(",") if v.strip()]
    try:
        report = calibrate_adapters(
            None if str(args.adapters).lower() == "none" else args.adapters, args.inputs, args.out,
            backbone=args.backbone, weights=args.weights, device=args.device, precision=args.precision,
            specificity=args.specificity, grade_quantiles=quantiles, axis=args.axis, intensity=args.intensity,
            top_k=args.top_k, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as e:
        print(f"medad calibrate: error: {e}", file=sys.stderr)
        return 2
    s = report.summary()
    print(json.dumps(s, indent=1))
    print(f"wrote {args.out}: {s['n_studies']} normal studies; flagged iff calibrated volume score > "
          f"{s['operating_point']:.4f}; over normal studies exchangeable with these, P(flagged) <= {s['fpr_bound']:.4f}"
          f" (and <= {s['fpr_bound_95']:.4f} for 95 % of calibration sets)")
    return 0
