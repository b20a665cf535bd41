"""Core inference speed: medad's batched detector vs a reference-style loop (MVFA-AD's way of running).

The reference-style baseline runs one image at a time in fp32, materializes the attention weights
(``need_weights=True``, as the reference's vendored open_clip block does), computes every adapter output including the
dead last-level ``fc2`` and the unused pooled projection, and scores each image with its own Python loop over levels.
medad runs the same math batched under ``torch.inference_mode`` with open_clip's fused attention, in fp32 and with
``precision="bf16"`` (bf16 backbone weights; adapters and scores fp32). All three use the same random ViT-L-14-336
weights; outputs are checked to agree before any timing is reported. The paths run interleaved (``--repeats`` rounds
of ref, fp32, bf16) in one process, so machine load hits them alike; the best round of each is reported.

Every sentence of the reading is computed from this run's figures: the speed ratios, this CPU's plain GEMM rates in
fp32 and bf16 (measured here, on the ViT-L MLP shape), the share of the CPU the process got, the load average, the
CPU flags that matter and what ``precision="auto"`` picks on this machine.

    python benchmarks/bench_inference.py --backbone ViT-L-14-336 --n 8 --batch 8
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
import torch.nn.functional as F

import medad
from common import (command_line, cpu_flags_line, gemm_gflops, load_average, machine, peak_rss_mib,
                    reference_style_tokens, update_section, vit_gflop_per_slice)
from medad.model.precision import ENV_VAR, capability, resolve_precision


@torch.no_grad()
def reference_style_predict(det, images):
    """One image at a time, attention weights materialized, per-image Python scoring (returns maps [B,H,W])."""
    text, levels = det.text_features, det.model.levels
    grid = det.model.grid_size
    maps, scores = [], []
    for i in range(images.shape[0]):
        seg_tokens, det_tokens = reference_style_tokens(det, det.prepare(images[i:i + 1]))
        amap, score = 0, 0
        for seg_h, det_h in zip(seg_tokens, det_tokens):
            p = seg_h[0, 1:, :]
            p = p / p.norm(dim=-1, keepdim=True)
            logits = (100.0 * p @ text).T.reshape(1, 2, *grid)
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)
            amap = amap + torch.softmax(logits, dim=1)[0, 1]
            q = det_h[0, 1:, :]
            q = q / q.norm(dim=-1, keepdim=True)
            score = score + torch.softmax(100.0 * q @ text, dim=-1)[:, 1].mean()
        maps.append(amap / len(levels))
        scores.append(score / len(levels))
    return torch.stack(maps), torch.stack(scores)


def _speed(r: float, tie: float = 0.05) -> str:
    """``"2.16x the speed"``, with a tie marked (``r`` = speed ratio, > 1 = faster)."""
    return f"{r:.2f}x the speed" + (f" (the same within {tie:.0%})" if abs(r - 1.0) <= tie else "")


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def reading(*, dev, n, t, cpu_share, threads, load0, load1, gflop, gemm, auto, cap, err, d16_map, d16_score,
            cpu_t) -> str:
    """The interpretation, sentence by sentence from the figures of this run (nothing fixed)."""
    out = []
    cores = os.cpu_count() or 1
    busy = min(cpu_share.values()) < 0.8 if dev == "cpu" else max(load0, load1) >= 0.5 * cores
    share = f"{min(cpu_share.values()):.0%}-{max(cpu_share.values()):.0%}"
    out.append(f"Load average {load0:.1f} at the start and {load1:.1f} at the end on {cores} cores; the process got "
               f"{share} of its {threads} threads' CPU time "
               + ("(the machine was shared with other jobs: absolute speeds are pessimistic, the ratios of the "
                  "interleaved paths are the figures to compare)." if busy
                  else "(a quiet machine: the absolute speeds are representative of this CPU)."))
    r_fp32 = t["ref"] / t["fp32"]
    rate = {k: gflop * n / v for k, v in t.items()}
    of_gemm = rate["fp32"] / gemm["fp32"]
    out.append(f"Batched fp32 ran at {_speed(r_fp32)} of the reference-style loop; at {_num(gflop)} GFLOP per slice "
               f"the fp32 paths reached {_num(rate['ref'])} (reference) and {_num(rate['fp32'])} (medad) GFLOP/s, "
               f"against {_num(gemm['fp32'])} GFLOP/s for a plain fp32 GEMM of the ViT-L MLP shape on this "
               f"{dev.upper()}, i.e. {of_gemm:.0%} of it"
               + (": batching and fused attention cannot gain much more in fp32 here." if of_gemm >= 0.6 else "."))
    r16 = t["fp32"] / t["bf16"]
    gemm_ratio = gemm["bf16"] / gemm["fp32"]
    out.append(f"precision='bf16' ran at {_speed(r16)} of medad fp32 and {t['ref'] / t['bf16']:.2f}x that of the "
               f"reference-style loop; a plain bf16 GEMM ran at {gemm_ratio:.2f}x the fp32 GEMM rate on this "
               f"{dev.upper()}, so bf16 "
               + ("units are native here." if gemm_ratio > 1.2 else "is not computed faster than fp32 here."))
    if dev == "cpu":
        out.append(f"Counted in CPU seconds of the process (less inflated by other jobs than wall time), batched fp32 "
                   f"ran at {cpu_t['ref'] / cpu_t['fp32']:.2f}x and bf16 at {cpu_t['ref'] / cpu_t['bf16']:.2f}x the "
                   f"reference-style loop, bf16 at {cpu_t['fp32'] / cpu_t['bf16']:.2f}x fp32.")
    fastest = "bf16" if r16 > 1.05 else "fp32" if r16 < 0.95 else None
    verdict = ("which this run confirms as the faster choice." if fastest == auto else
               "and the two precisions tie in this run." if fastest is None else
               f"but this run measured {fastest} faster for this backbone ({max(r16, 1 / r16):.2f}x): 'auto' is the "
               "slower choice here (pass precision explicitly, and please report it).")
    out.append(f"precision='auto' resolves to {auto} here ({cap}), {verdict}")
    out.append(f"Accuracy: medad fp32 vs reference-style max |map diff| {err:.1e}; bf16 vs fp32 max |map diff| "
               f"{d16_map:.1e}, max |image score diff| {d16_score:.1e}.")
    return " ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--n", type=int, default=8, help="images per timed call")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved timed rounds (best reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()
    dev = torch.device(args.device).type
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    load0 = load_average()
    auto = resolve_precision("auto", args.device)
    det32 = medad.load_detector(backbone=args.backbone, weights="random", device=args.device, precision="fp32")
    det16 = copy.deepcopy(det32)
    det16.precision = "bf16"  # backbone weights and blocks in bf16, adapters and scores in fp32
    images = torch.rand(args.n, 3, 240, 240, generator=torch.Generator().manual_seed(0)).to(args.device)
    gflop = vit_gflop_per_slice(det32)
    gemm = {"fp32": 0.0, "bf16": 0.0}  # best of the rounds, measured next to the paths

    paths = {"ref": lambda: reference_style_predict(det32, images),
             "fp32": lambda: det32.predict(images, batch_size=args.batch),
             "bf16": lambda: det16.predict(images, batch_size=args.batch)}
    warm = images[: min(2, args.n)]
    reference_style_predict(det32, warm), det32.predict(warm), det16.predict(warm)  # lazy init, first allocations
    times = {k: [] for k in paths}
    cpu = {k: [] for k in paths}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            sync()
            c, w = time.process_time(), time.perf_counter()
            outputs[name] = fn()
            sync()
            times[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
        for dtype in gemm:
            gemm[dtype] = max(gemm[dtype], gemm_gflops(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]),
                                                       device=args.device))
    load1 = load_average()
    ref_maps, _ = outputs["ref"]
    res, res16 = outputs["fp32"], outputs["bf16"]
    err = float((res.anomaly_maps - ref_maps).abs().max())
    assert err < 1e-3, f"medad and the reference-style loop disagree (max |diff| {err})"
    d16_map = float((res16.anomaly_maps - res.anomaly_maps).abs().max())
    d16_score = float((res16.image_scores - res.image_scores).abs().max())
    best = {k: min(v) for k, v in times.items()}
    cpu_best = {k: min(v) for k, v in cpu.items()}  # CPU seconds (all threads): less sensitive to other jobs
    threads = torch.get_num_threads()
    share = {k: min(c / w for c, w in zip(cpu[k], times[k])) / threads for k in paths} if dev == "cpu" else {
        k: 1.0 for k in paths}

    names = {"ref": "reference-style loop (batch 1, fp32, attention weights)",
             "fp32": f"medad predict (batch {args.batch}, precision='fp32')",
             "bf16": f"medad predict (batch {args.batch}, precision='bf16')"}
    lines = [f"Command: `{command_line()}`", "", f"Machine: {machine()}; {cpu_flags_line()}; {threads} torch threads.",
             "", f"Backbone {args.backbone} with random weights, {args.n} slices of 240x240 per call, device "
             f"{args.device}, {args.repeats} interleaved round(s), best reported.", "",
             "| path | s per call | slices/s | speed-up vs reference | all rounds (s) | CPU s per call | "
             "speed-up in CPU s |", "|---|---|---|---|---|---|---|"]
    for k, name in names.items():
        lines.append(f"| {name} | {best[k]:.2f} | {args.n / best[k]:.2f} | {best['ref'] / best[k]:.2f}x | "
                     f"{', '.join(f'{v:.2f}' for v in times[k])} | {cpu_best[k]:.2f} | "
                     f"{cpu_best['ref'] / cpu_best[k]:.2f}x |")
    lines += ["", f"Plain GEMM [2320x1024]@[1024x4096] on this {dev} (best of the rounds): fp32 {gemm['fp32']:.0f} "
              f"GFLOP/s, bf16 {gemm['bf16']:.0f} GFLOP/s. Peak RSS of the process: {peak_rss_mib():.0f} MiB.", "",
              "Reading (computed from the figures above): " + reading(
                  dev=dev, n=args.n, t=best, cpu_share=share, threads=threads, load0=load0, load1=load1, gflop=gflop,
                  gemm=gemm, auto=auto, cap=f"{ENV_VAR} is set" if os.environ.get(ENV_VAR) else capability(args.device),
                  err=err, d16_map=d16_map, d16_score=d16_score, cpu_t=cpu_best),
              "", "GPU figures: see the GPU section (`benchmarks/bench_gpu.py`)."]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        update_section(f"Core inference ({dev})", body)


if __name__ == "__main__":
    main()
