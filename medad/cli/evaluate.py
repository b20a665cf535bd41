"""``medad evaluate``: image/pixel AUROC, AP, F1-max and AUPRO of a detector on benchmark datasets.

Example::

    medad evaluate --data /data/mvfa/Brain_AD --adapters brain-4shot.pt --weights ViT-L-14-336px.pt
    medad evaluate --data /data/mvfa --adapters brain-zero.pt --target Brain --normalization transductive --json m.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from .train import add_common, load_datasets, resolve_device

_COLUMNS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "image_ap", "image_f1_max")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="metrics of a detector on benchmark datasets (AUROC, AP, F1-max, AUPRO)",
                       description="Evaluate adapters on the test (or another) split of datasets in the MVFA, BMAD "
                                   "or MVTec-style layout. Metrics are in percent in the table, fractions in JSON.")
    add_common(p)
    p.add_argument("--adapters", default=None, help="adapter checkpoint, 'demo', or none for untrained adapters")
    p.add_argument("--target", action="append", help="dataset name(s) to evaluate (default: all given)")
    p.add_argument("--split", default="test")
    p.add_argument("--object-name", default=None, help="prompt object name (default: the dataset's)")
    p.add_argument("--normalization", choices=["fitted", "transductive"], default="fitted",
                   help="fitted: the checkpoint's normalizers (default); transductive: test-set min/max like the "
                        "reference")
    p.add_argument("--image-score", choices=["det", "map_max"], default=None,
                   help="image score rule (default: the checkpoint's)")
    p.add_argument("--no-aupro", action="store_true", help="skip AUPRO (connected components per mask)")
    p.add_argument("--json", default=None, help="write the metrics as JSON here")
    return p


def _pct(v) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.2f}"


def run(args: argparse.Namespace) -> int:
    import medad
    from medad.checkpoints import CheckpointError
    from medad.datasets import DatasetLayoutError
    from medad.evaluation import evaluate
    from medad.weights import WeightsError

    try:
        datasets = load_datasets(args)
        if args.target:
            missing = set(args.target) - {d.name for d in datasets}
            if missing:
                print(f"error: unknown --target {sorted(missing)}; datasets: {[d.name for d in datasets]}",
                      file=sys.stderr)
                return 2
            datasets = [d for d in datasets if d.name in args.target]
        device = resolve_device(args.device)
        rows = []
        for ds in datasets:
            det = medad.load_detector(backbone=args.backbone, weights=args.weights, adapters=args.adapters,
                                      object_name=args.object_name or ds.object_name, device=device,
                                      precision=args.precision)
            m = evaluate(det, ds, args.split, normalization=args.normalization, image_score_rule=args.image_score,
                         batch_size=args.batch_size, num_workers=args.workers, progress=not args.no_progress,
                         aupro=not args.no_aupro)
            m["adapters"] = str(args.adapters)
            prov = det.metadata or {}
            m["protocol"] = prov.get("protocol_label", "untrained adapters" if args.adapters is None else "unknown")
            rows.append(m)
        print(f"{'dataset':<16}{'split':<7}" + "".join(f"{c:>14}" for c in _COLUMNS) + "  protocol")
        for m in rows:
            print(f"{m['dataset']:<16}{m['split']:<7}" + "".join(f"{_pct(m.get(c)):>14}" for c in _COLUMNS)
                  + f"  {m['protocol']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    except (DatasetLayoutError, ValueError, FileNotFoundError, CheckpointError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
