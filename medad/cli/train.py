"""``medad train``: train MVFA adapters (zero-shot leave-one-dataset-out, few-shot, normal-only few-shot).

Examples::

    medad train --data /data/mvfa --mode zero-shot --target Brain --out brain-zero.pt --weights ViT-L-14-336px.pt
    medad train --data /data/mvfa/Brain_AD --mode few-shot --k 4 --out brain-4shot.pt --weights ViT-L-14-336px.pt
    medad train --data /data/mvfa/Brain_AD --mode normal-only --k 4 --out brain-4normal.pt --backbone tiny
    torchrun --nproc_per_node 8 -m medad train ...            # data parallel over 8 GPUs
"""

from __future__ import annotations

import argparse
import json
import sys


def add_common(p: argparse.ArgumentParser) -> None:
    """Options shared by ``medad train`` and ``medad evaluate``."""
    p.add_argument("--data", action="append", required=True, metavar="DIR",
                   help="dataset folder (e.g. .../Brain_AD) or a folder of datasets; repeatable")
    p.add_argument("--backbone", default=None, help="backbone config: ViT-L-14-336 (paper) or tiny (tests/demos)")
    p.add_argument("--weights", default=None, help="backbone weights file (OpenAI .pt / open_clip / safetensors)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="frozen backbone weights: auto = bf16 where the device computes it natively, else fp32")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="image-loading worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--lenient-masks", action="store_true",
                   help="use abnormal images without masks (image level only) instead of stopping with an error")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_datasets(args: argparse.Namespace):
    from medad.datasets import discover_datasets

    found = []
    for d in args.data:
        found += discover_datasets(d, strict_masks=not args.lenient_masks)
    names = [d.name for d in found]
    if len(set(names)) != len(names):
        raise ValueError(f"two datasets have the same name: {names}; give each once")
    return found


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train MVFA adapters (zero-shot / few-shot / normal-only)",
                       description="Train MVFA adapters with the backbone frozen. Zero-shot: leave-one-dataset-out "
                                   "over the datasets given. Few-shot: k normal + k abnormal support images from the "
                                   "target's valid split with 11 augmentations. Normal-only: k normal images, memory "
                                   "bank only (no training).")
    add_common(p)
    p.add_argument("--mode", choices=["zero-shot", "few-shot", "normal-only"], default="few-shot")
    p.add_argument("--target", help="target dataset name (e.g. Brain); default: the only dataset given")
    p.add_argument("--k", type=int, default=4, help="support images per class (few-shot modes)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, default=None, help="default 1e-4 zero-shot, 1e-3 few-shot")
    p.add_argument("--seed", type=int, default=111)
    p.add_argument("--support-seed", type=int, default=0, help="seed of the random k-shot support draw")
    p.add_argument("--protocol", choices=["clean", "paper"], default="clean",
                   help="clean: model selection on validation data (default); paper: on the TEST split like the "
                        "reference (labelled so in every output)")
    p.add_argument("--det-loss", choices=["bce", "reference"], default="bce",
                   help="detection loss: correct BCE on the probability (default) or the reference's "
                        "BCE-with-logits on the probability")
    p.add_argument("--adapters", default=None,
                   help="normal-only mode only: build the memory bank on these adapters (e.g. zero-shot ones); "
                        "few-shot and zero-shot train fresh adapters")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CUDA")
    p.add_argument("--out", required=True, help="checkpoint to write (adapters, normalizers, bank, provenance)")
    p.add_argument("--evaluate", action="store_true", help="evaluate on the target's test split afterwards")
    p.add_argument("--history", default=None, help="write the per-epoch history as JSON here")
    return p


def run(args: argparse.Namespace) -> int:
    from medad import training
    from medad.checkpoints import CheckpointError
    from medad.datasets import DatasetLayoutError
    from medad.training import distributed
    from medad.weights import WeightsError

    info = distributed.init_distributed(resolve_device(args.device))
    try:
        datasets = load_datasets(args)
        try:
            training.pick_target(datasets, args.target)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = training.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                                      device=str(info.device), precision=args.precision, amp=not args.no_amp, det_loss=args.det_loss,
                                      num_workers=args.workers, progress=not args.no_progress)
        result = training.train(datasets, args.mode, target=args.target, k=args.k, backbone=args.backbone,
                                weights=args.weights, adapters=args.adapters, config=config, protocol=args.protocol,
                                support_seed=args.support_seed, out=args.out, history_path=args.history,
                                evaluate=args.evaluate)
        if not info.main:
            return 0
        print(f"saved {result.checkpoint} ({training.PROTOCOL_LABELS[args.protocol]}; best epoch {result.best_epoch})")
        if result.metrics is not None:
            print(json.dumps({k: v for k, v in result.metrics.items() if not isinstance(v, list)}, indent=1))
        return 0
    except (DatasetLayoutError, ValueError, FileNotFoundError, CheckpointError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.cleanup()
