#!/usr/bin/env python
"""Train the embedded demo model: tiny backbone + MVFA adapters on synthetic CT and MR phantoms.

    python scripts/train_demo_model.py                       # writes medad/assets/demo-tiny-phantom.pt
    python scripts/train_demo_model.py --eval-only           # held-out voxel AUROC of the installed demo model

DEMO WEIGHTS, NOT FOR CLINICAL USE. The backbone is the random ``tiny`` config (not CLIP) and the data are generated
phantoms (``medad.synthetic.phantoms``): the model exists so the README's first command, the bundle and the MONAI Label
app show something meaningful on the sample data without any download.

Training slices are produced by the volume runner's own preprocessing (``medad.inference.VolumeRunner`` with
``intensity="auto"``: CT soft-tissue window, MR foreground percentiles; radiological view; square padding; bicubic
resize to 240): a capturing stand-in detector records exactly the batches the runner would send to the model, so the
demo adapters see at training time what they see at inference time. Masks go through the same slicing/view/padding
with nearest-like thresholding at 0.5. Background-only slices (skipped by the runner) are dropped.

Held-out check: voxel-wise AUROC of the runner's 3D map against the phantom lesion mask, on phantom seeds never used
in training or model selection (CT head and MR brain, reported separately).
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
from medad.synthetic.phantoms import make_ct_phantom, make_mr_phantom
from medad.evaluation.metrics import PixelMetrics, auroc
from medad.training.features import features_from_tensors
from medad.training.fit import Selector, TrainConfig, fit_adapters, reset_adapters
from medad.inference import VolumeRunner

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "medad" / "assets" / "demo-tiny-phantom.pt"
LABEL = "demo weights, not for clinical use"
VAL_SEEDS = range(2000, 2003)
TEST_SEEDS = range(3000, 3004)


class _Capture:
    """Stand-in detector: records the model inputs the volume runner produces, returns zero maps."""

    def __init__(self, image_size: int = 240):
        self.image_size = image_size
        self.batches: list[torch.Tensor] = []

    def predict(self, x: torch.Tensor):
        self.batches.append(x.detach().clone())
        b = x.shape[0]

        class R:
            anomaly_maps = torch.zeros(b, x.shape[-2], x.shape[-1])
            image_scores = torch.zeros(b)

        return R()


def _volume(arr: np.ndarray, affine: np.ndarray, modality: str | None) -> MetaTensor:
    meta = {"modality": modality} if modality else {}
    return MetaTensor(torch.as_tensor(arr, dtype=torch.float32)[None], affine=torch.as_tensor(affine), meta=meta)


def runner_slices(image: np.ndarray, mask: np.ndarray, affine: np.ndarray, modality: str):
    """Model inputs ``[S,3,240,240]`` and masks ``[S,1,240,240]`` of one phantom, as the volume runner makes them."""
    cap_i, cap_m = _Capture(), _Capture()
    VolumeRunner(cap_i, batch_size=64, skip_empty=False).run(_volume(image, affine, modality))
    VolumeRunner(cap_m, batch_size=64, skip_empty=False, intensity="none").run(_volume(mask.astype(np.float32),
                                                                                        affine, None))
    x, m = torch.cat(cap_i.batches), torch.cat(cap_m.batches)[:, :1]
    keep = x.flatten(1).amax(1) > 1e-6  # the runner skips background-only slices
    return x[keep], (m[keep] > 0.5).float()


def phantom_set(seeds, with_normals: bool = True):
    """Slices of CT head and MR brain phantoms for ``seeds`` (+ one lesion-free volume per modality)."""
    xs, ms = [], []
    for seed in seeds:
        for maker, modality in ((make_ct_phantom, "CT"), (make_mr_phantom, "MR")):
            n_lesions = 0 if (with_normals and seed == seeds[0]) else 4
            img, mask, aff = maker(seed, n_lesions=n_lesions)
            x, m = runner_slices(img, mask, aff, modality)
            xs.append(x)
            ms.append(m)
    x, m = torch.cat(xs), torch.cat(ms)
    return x, m, (m.flatten(1).amax(1) > 0).long()


def balance(x, m, y, seed: int = 0):
    """All lesion slices + as many randomly chosen lesion-free slices (most slices of a phantom have no lesion)."""
    pos, neg = (y == 1).nonzero().flatten(), (y == 0).nonzero().flatten()
    neg = neg[torch.randperm(len(neg), generator=torch.Generator().manual_seed(seed))[:len(pos)]]
    keep = torch.cat([pos, neg])
    return x[keep], m[keep], y[keep]


def heldout_auroc(det, seeds=TEST_SEEDS) -> dict:
    """Voxel AUROC (and image-level slice AUROC) of the runner's maps on held-out phantoms, per modality."""
    out = {}
    runner = VolumeRunner(det, batch_size=32)
    for maker, modality in ((make_ct_phantom, "CT"), (make_mr_phantom, "MR")):
        pm, slice_scores, slice_labels = PixelMetrics(aupro=False), [], []
        for seed in seeds:
            img, mask, aff = maker(seed, n_lesions=4)
            res = runner.run(_volume(img, aff, modality))
            amap = res.anomaly_map[0].as_tensor()  # [X, Y, Z]
            m = torch.as_tensor(mask).float()
            pm.update(amap.permute(2, 0, 1), m.permute(2, 0, 1))
            slice_scores.append(torch.as_tensor(res.slice_scores))
            slice_labels.append(m.flatten(0, 1).amax(0))
        scores, labels = torch.cat(slice_scores), torch.cat(slice_labels)
        out[modality] = {"voxel_auroc": pm.compute()["pixel_auroc"], "slice_auroc": auroc(scores, labels > 0)}
    return out


def tune_smoothing(det, grid=(0.0, 4.0, 8.0, 12.0, 16.0)) -> dict:
    """Pick the map's Gaussian smoothing (``det.options.smoothing_sigma``, pixels at 240) on the *validation* phantoms.

    The criterion is the mean of the CT and MR voxel AUROC on ``VAL_SEEDS`` (never the held-out seeds).
    """
    scores = {}
    for sigma in grid:
        det.options.smoothing_sigma = sigma
        r = heldout_auroc(det, VAL_SEEDS)
        scores[sigma] = (r["CT"]["voxel_auroc"] + r["MR"]["voxel_auroc"]) / 2
        print(f"smoothing sigma {sigma}: validation voxel AUROC (mean CT/MR) {scores[sigma]:.4f}", flush=True)
    det.options.smoothing_sigma = max(scores, key=scores.get)
    return {str(k): v for k, v in scores.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sums(asset: Path) -> None:
    """Record the asset's SHA-256 in ``medad/assets/SHA256SUMS`` (checked by ``load_detector(adapters="demo")``)."""
    sums = asset.parent / "SHA256SUMS"
    lines = [ln for ln in (sums.read_text().splitlines() if sums.is_file() else []) if ln.strip()
             and ln.split()[1] != asset.name]
    lines.append(f"{sha256(asset)}  {asset.name}")
    sums.write_text("\n".join(sorted(lines, key=lambda s: s.split()[1])) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ASSET))
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant")
    p.add_argument("--n-train", type=int, default=10, help="training phantoms per modality (seeds 1000...)")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--retune", action="store_true",
                   help="load --out, re-pick the smoothing on the validation phantoms, re-evaluate, save")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if args.eval_only:
        det = medad.load_detector(adapters=out)
        print(json.dumps(heldout_auroc(det), indent=1))
        return 0

    if args.retune:
        det = medad.load_detector(adapters=out)
        prov = dict(det.metadata)
        prov["smoothing_validation"] = tune_smoothing(det)
        prov["smoothing_sigma"] = det.options.smoothing_sigma
        prov["heldout"] = heldout_auroc(det)
        print("held-out:", json.dumps(prov["heldout"]), flush=True)
        save_checkpoint(det, out, extra=prov, include_backbone=True)
        if out.resolve() == ASSET.resolve():
            write_sums(out)
        print(f"saved {out} (smoothing sigma {det.options.smoothing_sigma})")
        return 0

    t0 = time.time()
    det = medad.load_detector(backbone="tiny", object_name="Brain")
    reset_adapters(det, args.seed)
    train_seeds = list(range(1000, 1000 + args.n_train))
    x, m, y = balance(*phantom_set(train_seeds), seed=args.seed)
    xv, mv, yv = phantom_set(list(VAL_SEEDS))
    print(f"train slices {len(y)} ({int(y.sum())} with lesions), validation {len(yv)}; {time.time() - t0:.0f}s",
          flush=True)
    untrained = heldout_auroc(det)
    print("untrained adapters, held-out:", json.dumps(untrained), flush=True)
    train = features_from_tensors(det, x, y, m)
    sel = Selector(features_from_tensors(det, xv, yv, mv), det.text_features[None], "phantom-valid")
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=True,
                         lr_schedule=args.lr_schedule)
    history, best = fit_adapters(det, train, det.text_features[None], config, args.lr, [sel],
                                 on_epoch=lambda e, r: print(f"epoch {e}: loss {r['loss']:.3f} val pixel AUROC "
                                                             f"{r.get('phantom-valid/pixel_auroc', float('nan')):.4f}",
                                                             flush=True))
    det.fit_normalizers(xv, batch_size=32)  # normalizers from validation phantoms (not the held-out ones)
    smoothing = tune_smoothing(det)
    heldout = heldout_auroc(det)
    print("trained, held-out:", json.dumps(heldout), flush=True)
    prov = {"label": LABEL, "medad_version": medad.__version__, "backbone": "tiny",
            "backbone_sha256": det.metadata.get("backbone_sha256"), "protocol": "clean",
            "protocol_label": "demo model: synthetic phantoms, validation-phantom model selection",
            "mode": "demo", "training_data": f"medad.synthetic.phantoms CT head + MR brain, seeds {train_seeds}, "
                                             "all lesion slices + as many lesion-free slices",
            "data_fingerprint": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
            "validation_seeds": list(VAL_SEEDS), "heldout_seeds": list(TEST_SEEDS), "heldout": heldout,
            "untrained_heldout": untrained, "epochs": args.epochs, "best_epoch": best, "lr": args.lr,
            "lr_schedule": args.lr_schedule, "smoothing_sigma": det.options.smoothing_sigma,
            "smoothing_validation": smoothing,
            "preprocessing": "VolumeRunner(intensity='auto', view='radiological')"}
    save_checkpoint(det, out, extra=prov, include_backbone=True)
    if out.resolve() == ASSET.resolve():
        write_sums(out)
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {sha256(out)[:16]}...) in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
