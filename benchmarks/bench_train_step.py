"""Training-step speed: medad's cached-feature batched step vs a reference-style step (MVFA-AD's way of training).

Reference-style step (what ``train_zero.py``/``train_few.py`` of MVFA-AD do): batch 1, every CLIP parameter has
``requires_grad=True`` (so backward computes weight gradients for the whole vision tower, never zeroed), the full
forward from pixels through all blocks with materialized attention weights (``need_weights=True``), every adapter
output including the dead last-level ``fc2``, the pooled projection computed and unused, the losses of the spec
(focal + dice on the seg maps, BCE-with-logits on the det probability, as the reference), Adam step on the adapters.

medad step (``medad.training``): hidden states after the first adapter level's block cached once (their cost is
reported separately and amortized over the epochs), backbone frozen (no weight gradients), batch ``--batch``, same
losses (correct BCE), Adam step on the adapters. Both paths use the same random ViT-L-14-336 weights and the same
images and run interleaved in one process, so machine load affects both alike.

    python benchmarks/bench_train_step.py --backbone ViT-L-14-336 --steps 2 --batch 4
"""

from __future__ import annotations

import argparse
import time

import torch

import medad
from common import command_line, machine, peak_rss_mib, reference_style_tokens, update_section
from medad.training.features import features_from_tensors
from medad.training.losses import MVFALoss


def reference_style_step(det, image, mask, label, opt, loss_fn):
    """One MVFA-AD-style training step on one image (all CLIP parameters require grad)."""
    text = det.text_features
    seg, dets = reference_style_tokens(det, det.prepare(image))
    out = loss_fn(torch.stack(seg), torch.stack(dets), text, label, mask)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return float(out["loss"].detach())


def medad_step(det, feats, idx, opt, loss_fn, amp_cpu):
    h, labels, _, masks, has = feats.batch(idx, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp_cpu):
        seg, dets = det.model.forward_levels(h)
    out = loss_fn(seg, dets, det.text_features, labels, masks, has)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return float(out["loss"].detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per path")
    ap.add_argument("--batch", type=int, default=4, help="medad batch size")
    ap.add_argument("--epochs", type=int, default=50, help="epochs over which the feature cache is amortized")
    ap.add_argument("--cpu-bf16", action="store_true", help="also time medad's step under CPU bf16 autocast")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()

    det = medad.load_detector(backbone=args.backbone, weights="random", precision="fp32")  # the rows say fp32
    g = torch.Generator().manual_seed(0)
    n = args.batch
    images = torch.rand(n, 3, 240, 240, generator=g)
    masks = torch.zeros(n, 1, 240, 240)
    masks[n // 2:, :, 80:140, 90:150] = 1.0
    labels = (masks.flatten(1).amax(1) > 0).long()
    params = list(det.model.adapters.parameters())
    for p in params:
        p.requires_grad_(True)

    t0 = time.perf_counter()
    feats = features_from_tensors(det, images, labels, masks, batch_size=n)
    t_cache = (time.perf_counter() - t0) / n  # per image, paid once per training run

    ref_opt = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999))
    ref_loss = MVFALoss(det_loss="reference")
    med_opt = torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.999))
    med_loss = MVFALoss()
    idx = torch.arange(n)

    def ref_once(i):
        for p in det.model.visual.parameters():
            p.requires_grad_(True)
        t = time.perf_counter()
        reference_style_step(det, images[i:i + 1], masks[i:i + 1], labels[i:i + 1], ref_opt, ref_loss)
        dt = time.perf_counter() - t
        for p in det.model.visual.parameters():
            p.requires_grad_(False)
            p.grad = None
        return dt

    def med_once(amp):
        t = time.perf_counter()
        medad_step(det, feats, idx, med_opt, med_loss, amp)
        return (time.perf_counter() - t) / n

    # warm-up both, then interleave the timed steps
    ref_once(0)
    med_once(False)
    t_ref, t_med, t_bf16 = [], [], []
    for s in range(args.steps):
        t_ref.append(ref_once(s % n))
        t_med.append(med_once(False))
        if args.cpu_bf16:
            t_bf16.append(med_once(True))
    ref, med = min(t_ref), min(t_med)
    amort = t_cache / args.epochs
    rows = [("reference-style (batch 1, all CLIP params require grad, fp32, attention weights)", ref),
            (f"medad (cached block-{det.model.levels[0]} states, frozen backbone, batch {n}, fp32)", med),
            (f"medad incl. feature cache amortized over {args.epochs} epochs", med + amort)]
    if t_bf16:
        rows.append((f"medad (batch {n}, CPU bf16 autocast)", min(t_bf16)))
    lines = [f"Command: `{command_line()}`", "", f"Machine: {machine()}", "",
             f"Backbone {args.backbone} with random weights, 240x240 images, CPU, {args.steps} timed steps per path "
             "after one warm-up each, interleaved in one process (best step reported).", "",
             "| path | s per image per step | speed-up vs reference-style |", "|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t:.2f} | {ref / t:.2f}x |")
    lines += ["", f"Feature caching (blocks 1-{det.model.levels[0]} once, no grad): {t_cache:.2f} s per image. "
              f"All timed steps (s/image): reference {[round(t, 2) for t in t_ref]}, "
              f"medad {[round(t, 2) for t in t_med]}"
              + (f", medad bf16 {[round(t, 2) for t in t_bf16]}" if t_bf16 else "")
              + f". Peak RSS: {peak_rss_mib():.0f} MiB."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section("Training step (CPU)", body)


if __name__ == "__main__":
    main()
