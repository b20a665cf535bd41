"""Reproduce the MVFA paper's table (zero-shot and k-shot AUROC per dataset) with one command.

    # the paper's setting: BMAD/MVFA data + OpenAI ViT-L-14-336 weights
    python benchmarks/reproduce_paper_table.py --data /data/mvfa --weights ViT-L-14-336px.pt --protocol paper
    # pipeline check on whatever data is at hand, tiny random backbone
    python benchmarks/reproduce_paper_table.py --data ../shared/data/brats2015_subset/mvfa_layout --backbone tiny

For every dataset found under ``--data`` (``<Obj>_AD`` folders in the MVFA layout, BMAD or MVTec-style):

* **zero-shot**: leave-one-dataset-out training on the other datasets (lr 1e-4), evaluated on the target's test
  split. With a single dataset there is nothing to train on: the row then shows the *untrained* adapters and says so.
* **k-shot** (default k=4): k normal + k abnormal support images from the target's valid split, 11 augmentations,
  fresh adapters (lr 1e-3), memory bank; evaluated on the test split.
* **k-normal-shot**: k normal images only, memory bank, no training (the mode users of the reference asked for).

``--protocol paper`` selects checkpoints on the test split and min-max normalizes on the test split (the reference's
protocol; labelled in every output). ``--protocol clean`` (default) selects on validation data and uses normalizers
fitted on validation data. The published MVFA numbers are printed next to the measured ones; they are only comparable
with the OpenAI weights on the full BMAD/MVFA data.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import medad.training as training
from common import command_line, machine, update_section
from medad.datasets import discover_datasets
from medad.evaluation import evaluate
from medad.training.protocols import PROTOCOL_LABELS, PROTOCOL_NORMALIZATION

#: MVFA paper (CVPR 2024) AUROC %, (image, pixel) per dataset; pixel None for classification-only datasets.
PUBLISHED = {
    "zero-shot": {"Histopathology": (77.90, None), "Chest": (71.11, None), "Retina_OCT2017": (95.40, None),
                  "Brain": (78.63, 90.27), "Liver": (76.24, 97.85), "Retina_RESC": (83.31, 92.05)},
    "4-shot": {"Histopathology": (82.71, None), "Chest": (81.95, None), "Retina_OCT2017": (99.38, None),
               "Brain": (92.44, 97.30), "Liver": (81.18, 99.73), "Retina_RESC": (96.18, 98.97)},
}
ALIASES = {"HIS": "Histopathology", "camelyon16": "Histopathology", "ChestXray": "Chest", "RSNA": "Chest",
           "OCT17": "Retina_OCT2017", "OCT2017": "Retina_OCT2017", "BrainMRI": "Brain", "LiverCT": "Liver",
           "RESC": "Retina_RESC"}


def pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder of <Obj>_AD datasets (or one dataset folder)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="OpenAI ViT-L-14-336px.pt (the paper's backbone)")
    src.add_argument("--backbone", help="backbone config without weights, e.g. tiny (pipeline check)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--protocol", choices=["clean", "paper"], default="clean")
    ap.add_argument("--seed", type=int, default=111)
    ap.add_argument("--support-seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--settings", default="zero-shot,k-shot,k-normal-shot")
    ap.add_argument("--json", default=None, help="also write all metrics as JSON")
    ap.add_argument("--section", default="Training and evaluation", help="BENCHMARKS.md section title")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    backbone = "ViT-L-14-336" if args.weights else args.backbone
    datasets = discover_datasets(args.data)
    settings = args.settings.split(",")
    modes = {"zero-shot": "zero-shot", "k-shot": "few-shot", "k-normal-shot": "normal-only"}
    unknown = [s for s in settings if s not in modes]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose among {list(modes)}")
    config = training.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, device=args.device,
                                  num_workers=args.workers)
    normalization = PROTOCOL_NORMALIZATION[args.protocol]
    rows, t_start = [], time.time()
    for ds in datasets:
        paper_name = ALIASES.get(ds.name, ds.name)
        for setting in settings:
            t0 = time.time()
            note = ""
            mode = modes[setting]
            if mode == "zero-shot" and len(datasets) == 1:
                import medad

                det = medad.load_detector(backbone=backbone, weights=args.weights, object_name=ds.object_name,
                                          device=args.device)
                m = evaluate(det, ds, "test", normalization=normalization, batch_size=args.batch_size,
                             num_workers=args.workers, progress=False)
                note = "untrained adapters (no other dataset to train on)"
            else:
                m = training.train(datasets, mode, target=ds.name, k=args.k, backbone=backbone, weights=args.weights,
                                   config=config, protocol=args.protocol, support_seed=args.support_seed,
                                   evaluate=True).metrics
            if mode == "zero-shot":
                published, label = PUBLISHED["zero-shot"].get(paper_name), "zero-shot"
            elif mode == "few-shot":
                published = PUBLISHED["4-shot"].get(paper_name) if args.k == 4 else None
                label = f"{args.k}-shot"
            else:
                published, label = None, f"{args.k}-normal-shot (bank only)"
            m.update(setting=label, note=note, published=published, minutes=(time.time() - t0) / 60)
            rows.append(m)
            print(f"{ds.name} {label}: image AUROC {pct(m['image_auroc'])}, pixel AUROC {pct(m.get('pixel_auroc'))}"
                  f" ({m['minutes']:.1f} min) {note}", flush=True)

    tiny = args.weights is None
    head = ("**Pipeline check (tiny random backbone), not a paper comparison.** " if tiny else "") + \
        f"Protocol: {PROTOCOL_LABELS[args.protocol]}; normalization: {normalization}."
    lines = [f"Command: `{command_line()}`", "", f"Machine: {machine()}", "", head, "",
             f"Backbone {backbone}{'' if tiny else ' (OpenAI weights)'}, {args.epochs} epochs, batch "
             f"{args.batch_size}, seed {args.seed}, support seed {args.support_seed}. Metrics in %.", "",
             "| dataset | setting | test normal/abnormal | image AUROC | pixel AUROC | pixel AP | AUPRO | pixel F1-max "
             "| paper image/pixel AUROC | minutes | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        pub = m["published"]
        pub_s = "-" if pub is None else f"{pub[0]:.2f}" + ("" if pub[1] is None else f" / {pub[1]:.2f}")
        lines.append(f"| {m['dataset']} | {m['setting']} | {m['n_normal']}/{m['n_abnormal']} | {pct(m['image_auroc'])} "
                     f"| {pct(m.get('pixel_auroc'))} | {pct(m.get('pixel_ap'))} | {pct(m.get('aupro'))} "
                     f"| {pct(m.get('pixel_f1_max'))} | {pub_s} | {m['minutes']:.1f} | {m['note']} |")
    if tiny:
        lines += ["", "The tiny backbone is a randomly initialised 4-block ViT (not CLIP): these figures only show "
                  "that data reading, training, the memory bank, normalization and the metrics run end to end. The "
                  "paper column is what the OpenAI ViT-L-14-336 weights reached on the full BMAD/MVFA data."]
    lines += ["", f"Total {(time.time() - t_start) / 60:.1f} min."]
    body = "\n".join(lines)
    print(body)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    if not args.no_write:
        update_section(args.section, body)


if __name__ == "__main__":
    main()
