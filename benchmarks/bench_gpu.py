"""GPU benchmark in one short call: ViT-L inference, the volume runner, the training step (CUDA only).

Parts, in order of importance (each later one is skipped, and says so, once ``--budget-s`` is spent):

1. ``inference``: ``AnomalyDetector.predict`` on GPU-resident 240x240 slices, ViT-L-14-336 with random weights,
   batch 1/8/32/128, ``precision="fp32"`` and ``"bf16"``; median time per call, slices/s, peak GPU memory.
2. ``volume``: :class:`medad.inference.runner.VolumeRunner` on a generated 512x512x300 int16 CT (bf16, batch 128):
   slices/s of the whole run (slicing, windowing, resizing, model, writing the map back on the host).
3. ``train``: medad's training step (cached block-6 states, frozen backbone, batch 32; precision "auto" and bf16
   autocast as ``medad train`` runs on the device, and plain fp32) vs the reference-style step (batch 1, fp32, every
   CLIP parameter requiring grad, attention weights materialized), per image.
4. ``variants``: SDPA backends forced (math / flash / memory-efficient) and TF32 for fp32, batch 32 and 128.
5. ``compile``: ``torch.compile`` of the vision model (bf16 at batch 32/128, fp32 at 128).

Each part rewrites the "GPU (CUDA)" section of BENCHMARKS.md as soon as it is done (and ``--json``), so a run cut
short keeps what it measured. The reading is computed from the figures. Without a CUDA device the script measures
nothing, leaves BENCHMARKS.md alone and exits with status 2 (``--smoke`` runs every part on CPU with the tiny backbone
and small sizes, to check the script itself; it never writes BENCHMARKS.md).

    python benchmarks/bench_gpu.py --json /tmp/gpu.json        # model loading + about --budget-s (420 s)
    python benchmarks/bench_gpu.py --smoke                     # CPU self-check
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

GOAL_SLICES_PER_S = 1500  # issue 15: ViT-L at 240 px, bf16, one H100/H200-class GPU
GOAL_TRAIN_SPEEDUP = 5.0  # issue 15: training step vs the reference style on GPU
NO_CUDA = ("bench_gpu.py: no CUDA device is present (torch.cuda.is_available() is False), so nothing was measured "
           "and BENCHMARKS.md is unchanged. Run it on a host with an NVIDIA GPU (CUDA build of torch), or pass --smoke "
           "to check the script on CPU.")


class Bench:
    """Timing, peak memory, the time budget and the results collected so far."""

    def __init__(self, device: str, budget_s: float, min_s: float, min_calls: int) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.start = time.monotonic()
        self.budget_s, self.min_s, self.min_calls = budget_s, min_s, min_calls
        self.rows: dict[str, list[dict]] = {"inference": [], "volume": [], "train": [], "notes": []}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        from common import peak_rss_mib

        return peak_rss_mib()

    def time(self, fn, warmup: int = 1):
        """``(median s per call, all times, last output, peak memory MiB)``; at least ``min_calls`` calls and
        ``min_s`` seconds after ``warmup`` calls."""
        self.reset_peak()
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        times: list[float] = []
        while len(times) < self.min_calls or (sum(times) < self.min_s and len(times) < 200):
            t = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times), times, out, self.peak_mib()

    def note(self, text: str) -> None:
        print(text, flush=True)
        self.rows["notes"].append(text)


# ---------------------------------------------------------------------------------------------------------- parts
def part_inference(b: Bench, dets: dict, images: torch.Tensor, batches) -> dict:
    """Eager fp32 and bf16 at every batch size; returns the eager maps of the largest batch (for the variants)."""
    ref = {}
    for prec, det in dets.items():
        for bs in batches:
            x = images[:bs]
            t, _, res, mem = b.time(lambda: det.predict(x))
            b.rows["inference"].append(dict(precision=prec, variant="eager", batch=bs, s=t, slices_per_s=bs / t,
                                            peak_mib=mem, diff=None))
            print(f"inference {prec} eager batch {bs}: {bs / t:.1f} slices/s, {mem:.0f} MiB", flush=True)
            ref[(prec, bs)] = res.anomaly_maps.float()
    return ref


def _variant(b: Bench, det, prec: str, name: str, ctx_factory, batches, images, ref) -> None:
    for bs in batches:
        if b.left() <= 0:
            b.note(f"variant {name} {prec} batch {bs}: skipped (time budget spent)")
            continue
        x = images[:bs]
        try:
            with ctx_factory():
                t, _, res, mem = b.time(lambda: det.predict(x))
        except Exception as e:  # noqa: BLE001 - an unavailable kernel is a result, not a crash
            first = str(e).splitlines()[0][:120] if str(e) else ""
            b.note(f"variant {name} {prec} batch {bs}: not available ({type(e).__name__}: {first})")
            continue
        diff = float((res.anomaly_maps.float() - ref[(prec, bs)]).abs().max()) if (prec, bs) in ref else None
        b.rows["inference"].append(dict(precision=prec, variant=name, batch=bs, s=t, slices_per_s=bs / t,
                                        peak_mib=mem, diff=diff))
        print(f"inference {prec} {name} batch {bs}: {bs / t:.1f} slices/s", flush=True)


def part_variants(b: Bench, dets: dict, images, batches, ref) -> None:
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        b.note("SDPA variants: torch.nn.attention.sdpa_kernel is not available in this torch")
        return
    backends = {"SDPA math": SDPBackend.MATH, "SDPA flash": SDPBackend.FLASH_ATTENTION,
                "SDPA mem-efficient": SDPBackend.EFFICIENT_ATTENTION}
    for prec in ("bf16", "fp32"):
        for name, backend in backends.items():
            if prec == "fp32" and backend == SDPBackend.FLASH_ATTENTION:
                continue  # flash attention has no fp32 kernel
            _variant(b, dets[prec], prec, name, lambda be=backend: sdpa_kernel([be]), batches, images, ref)
    if b.cuda:
        def tf32():
            class _TF32:
                def __enter__(self):
                    self.old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

                def __exit__(self, *exc):
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.old

            return _TF32()

        _variant(b, dets["fp32"], "fp32", "TF32 matmuls", tf32, batches, images, ref)


def part_compile(b: Bench, dets: dict, images, plan, ref) -> None:
    """``plan``: [(precision, batch)], most important first. Compile time is reported separately."""
    compiled = {}
    for prec, bs in plan:
        if b.left() <= 0:
            b.note(f"torch.compile {prec} batch {bs}: skipped (time budget spent)")
            continue
        det, x = dets[prec], images[:bs]
        eager_model = det.model
        compiled.setdefault(prec, torch.compile(eager_model, dynamic=False))
        det.model = compiled[prec]  # swapped in for this row only (the weights are shared)
        try:
            t0 = time.perf_counter()
            det.predict(x)
            b.sync()
            t_compile = time.perf_counter() - t0
            t, _, res, mem = b.time(lambda: det.predict(x))
        except Exception as e:  # noqa: BLE001 - no compiler toolchain, unsupported op...
            first = str(e).splitlines()[0][:120] if str(e) else ""
            b.note(f"torch.compile {prec} batch {bs}: failed ({type(e).__name__}: {first})")
            continue
        finally:
            det.model = eager_model
        diff = float((res.anomaly_maps.float() - ref[(prec, bs)]).abs().max()) if (prec, bs) in ref else None
        b.rows["inference"].append(dict(precision=prec, variant=f"torch.compile (first call {t_compile:.0f} s)",
                                        batch=bs, s=t, slices_per_s=bs / t, peak_mib=mem, diff=diff))
        print(f"inference {prec} torch.compile batch {bs}: {bs / t:.1f} slices/s (compile {t_compile:.0f} s)",
              flush=True)


def part_volume(b: Bench, det, slices: int, size: int, batch: int) -> None:
    from bench_volume import make_ct
    from medad.inference.runner import VolumeRunner

    runner = VolumeRunner(det, batch_size=batch, intensity="ct:soft_tissue")
    runner.run(make_ct(8, size=size, seed=1))  # warm-up
    vol = make_ct(slices, size=size)
    b.reset_peak()
    b.sync()
    t0 = time.perf_counter()
    res = runner.run(vol)
    b.sync()
    dt = time.perf_counter() - t0
    scored = int((~res.skipped).sum())
    b.rows["volume"].append(dict(shape=f"{size}x{size}x{slices}", batch=batch, precision=det.precision, s=dt,
                                 slices_per_s=slices / dt, scored=scored, scored_per_s=scored / dt,
                                 peak_mib=b.peak_mib()))
    print(f"volume {size}x{size}x{slices}: {dt:.1f} s, {slices / dt:.1f} slices/s", flush=True)


def part_train(b: Bench, det_ref, det_auto, batch: int, epochs: int) -> None:
    """Reference-style step on ``det_ref`` (fp32); medad's step on ``det_auto`` (the precision ``medad train``
    resolves on this device, bf16 autocast as its default ``amp``) and on ``det_ref`` without autocast (fp32)."""
    from bench_train_step import reference_style_step
    from medad.training.features import features_from_tensors
    from medad.training.fit import accumulate_gradients
    from medad.training.losses import MVFALoss

    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 240, 240, generator=g)
    masks = torch.zeros(batch, 1, 240, 240)
    masks[batch // 2:, :, 80:140, 90:150] = 1.0
    labels = (masks.flatten(1).amax(1) > 0).long()
    dev, idx = b.device, torch.arange(batch)
    for det in (det_ref, det_auto):
        for p in det.model.adapters.parameters():
            p.requires_grad_(True)

    def adam(det):
        return torch.optim.Adam(det.model.adapters.parameters(), lr=1e-4, betas=(0.5, 0.999))

    def medad_path(det, amp: bool):
        """``(step function, feature-cache seconds per image)`` for ``det``."""
        b.sync()
        t0 = time.perf_counter()
        feats = features_from_tensors(det, images, labels, masks, device=dev, batch_size=batch, amp=amp)
        b.sync()
        t_cache = (time.perf_counter() - t0) / batch
        opt, loss_fn, texts = adam(det), MVFALoss(), det.text_features[None]

        def step():
            opt.zero_grad(set_to_none=True)
            accumulate_gradients(det, feats, texts, idx, loss_fn, dev, amp)
            opt.step()

        return step, t_cache

    ref_opt, ref_loss = adam(det_ref), MVFALoss(det_loss="reference")
    step_no = iter(range(10**6))

    def ref_step():
        i = next(step_no) % batch
        for p in det_ref.model.visual.parameters():
            p.requires_grad_(True)
        try:
            reference_style_step(det_ref, images[i:i + 1].to(dev), masks[i:i + 1].to(dev), labels[i:i + 1].to(dev),
                                 ref_opt, ref_loss)
        finally:
            for p in det_ref.model.visual.parameters():
                p.requires_grad_(False)
                p.grad = None

    t_ref, _, _, mem_ref = b.time(ref_step)
    rows = [dict(path="reference-style (batch 1, fp32, all CLIP params require grad, attention weights)",
                 s_per_image=t_ref, peak_mib=mem_ref)]
    level = det_auto.model.levels[0]
    caches = {}
    for det, amp, label in ((det_auto, True, f"{det_auto.precision} backbone + bf16 autocast, as `medad train` here"),
                            (det_ref, False, "fp32, no autocast")):
        step, caches[label] = medad_path(det, amp)
        t, _, _, mem = b.time(step)
        rows.append(dict(path=f"medad (cached block-{level} states, frozen backbone, batch {batch}, {label})",
                         s_per_image=t / batch, peak_mib=mem))
    first = next(iter(caches))
    rows.append(dict(path=f"medad as `medad train`, incl. feature cache amortized over {epochs} epochs",
                     s_per_image=rows[1]["s_per_image"] + caches[first] / epochs, peak_mib=None))
    for r in rows:
        r["speedup"] = t_ref / r["s_per_image"]
        b.rows["train"].append(r)
        print(f"train {r['path']}: {r['s_per_image'] * 1e3:.1f} ms/image, {r['speedup']:.2f}x", flush=True)
    b.rows["train_cache"] = dict(s_per_image=caches[first], blocks=level)


# ---------------------------------------------------------------------------------------------------------- report
def reading(b: Bench) -> str:
    inf, out = b.rows["inference"], []
    eager = {(r["precision"], r["batch"]): r for r in inf if r["variant"] == "eager"}
    if eager:
        best = max(inf, key=lambda r: r["slices_per_s"] if r["precision"] == "bf16" else -1)
        bf16_eager = [r for r in eager.values() if r["precision"] == "bf16"]
        if bf16_eager:
            top = max(bf16_eager, key=lambda r: r["slices_per_s"])
            out.append(f"Eager bf16 peaks at {top['slices_per_s']:.0f} slices/s (batch {top['batch']}), "
                       f"{'meeting' if top['slices_per_s'] >= GOAL_SLICES_PER_S else 'short of'} the "
                       f"{GOAL_SLICES_PER_S} slices/s goal; the fastest bf16 row overall is {best['variant']} at batch "
                       f"{best['batch']}: {best['slices_per_s']:.0f} slices/s.")
        common = sorted(bs for (p, bs) in eager if p == "fp32" and ("bf16", bs) in eager)
        if common:
            bs = common[-1]
            r = eager[("bf16", bs)]["slices_per_s"] / eager[("fp32", bs)]["slices_per_s"]
            out.append(f"At batch {bs} bf16 runs {r:.2f}x the fp32 rate.")
        for prec in ("fp32", "bf16"):
            rows = sorted((r for r in eager.values() if r["precision"] == prec), key=lambda r: r["batch"])
            if len(rows) > 1:
                gain = rows[-1]["slices_per_s"] / rows[0]["slices_per_s"]
                out.append(f"{prec}: batch {rows[-1]['batch']} gives {gain:.1f}x the slices/s of batch "
                           f"{rows[0]['batch']} ({rows[-1]['peak_mib']:.0f} MiB peak).")
        for r in inf:
            base = eager.get((r["precision"], r["batch"]))
            if r["variant"] != "eager" and base is not None:
                r["vs_eager"] = r["slices_per_s"] / base["slices_per_s"]
        gains = [r for r in inf if "vs_eager" in r]
        if gains:
            g = max(gains, key=lambda r: r["vs_eager"])
            sdpa = [r for r in gains if r["variant"].startswith("SDPA")]
            if sdpa and all(r["diff"] == 0.0 and abs(r["vs_eager"] - 1) < 0.05 for r in sdpa):
                out.append("Forcing an SDPA backend changed neither the maps nor the speed: the fused "
                           "nn.MultiheadAttention path chose its kernel by itself.")
            w = min(gains, key=lambda r: r["vs_eager"])
            out.append(f"Against eager at the same precision and batch, the best variant is {g['variant']} "
                       f"({g['precision']}, batch {g['batch']}, {g['vs_eager']:.2f}x) and the worst {w['variant']} "
                       f"({w['precision']}, batch {w['batch']}, {w['vs_eager']:.2f}x).")
    for v in b.rows["volume"]:
        same = eager.get((v["precision"], v["batch"]))
        out.append(f"The volume runner scores the {v['shape']} CT at {v['slices_per_s']:.0f} slices/s"
                   + (f", {v['slices_per_s'] / same['slices_per_s']:.0%} of the model's own rate at that batch and "
                      "precision (the rest is slicing, windowing, resizing and host transfers)." if same else "."))
    tr = b.rows["train"]
    if tr:
        s = tr[1]["speedup"]
        out.append(f"Training step: medad as `medad train` runs it is {s:.1f}x the reference style per image, "
                   f"{'meeting' if s >= GOAL_TRAIN_SPEEDUP else 'short of'} the {GOAL_TRAIN_SPEEDUP:.0f}x goal "
                   f"(fp32: {tr[2]['speedup']:.1f}x).")
    return " ".join(out)


def render(b: Bench, args, header: str) -> str:
    lines = [header, ""]
    if b.rows["inference"]:
        lines += ["| precision | variant | batch | ms per call | slices/s | peak GPU memory (MiB) | "
                  "max abs map diff vs eager |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in b.rows["inference"]:
            diff = "-" if r["diff"] is None else f"{r['diff']:.1e}"
            lines.append(f"| {r['precision']} | {r['variant']} | {r['batch']} | {r['s'] * 1e3:.1f} | "
                         f"{r['slices_per_s']:.1f} | {r['peak_mib']:.0f} | {diff} |")
        lines.append("")
    for v in b.rows["volume"]:
        lines += [f"Volume runner, generated CT {v['shape']} (int16, `ct:soft_tissue`), precision {v['precision']}, "
                  f"batch {v['batch']}: {v['s']:.1f} s, {v['slices_per_s']:.1f} slices/s ({v['scored']} scored, "
                  f"{v['scored_per_s']:.1f} scored slices/s), peak GPU memory {v['peak_mib']:.0f} MiB.", ""]
    if b.rows["train"]:
        lines += ["| training path | ms per image per step | speed-up vs reference-style | peak GPU memory (MiB) |",
                  "|---|---:|---:|---:|"]
        for r in b.rows["train"]:
            mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(f"| {r['path']} | {r['s_per_image'] * 1e3:.1f} | {r['speedup']:.2f}x | {mem} |")
        cache = b.rows["train_cache"]
        lines += ["", f"Feature cache (blocks 1-{cache['blocks']} once, no grad, as `medad train` here): "
                  f"{cache['s_per_image'] * 1e3:.1f} ms per image.", ""]
    if b.rows["notes"]:
        lines += ["Notes: " + "; ".join(b.rows["notes"]) + ".", ""]
    lines += [f"Reading (computed from the figures above): {reading(b)}",
              "", f"Total {time.monotonic() - b.start:.0f} s (budget {args.budget_s:.0f} s)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="ViT-L-14-336")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--variant-batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--volume", type=int, nargs=2, default=[512, 300], metavar=("SIZE", "SLICES"))
    ap.add_argument("--volume-batch", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=50, help="epochs over which the feature cache is amortized")
    ap.add_argument("--min-s", type=float, default=1.0, help="timed seconds per configuration (at least)")
    ap.add_argument("--min-calls", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420.0, help="later parts are skipped once this is spent")
    ap.add_argument("--parts", nargs="+", default=["inference", "volume", "train", "variants", "compile"])
    ap.add_argument("--json", type=Path, help="also write the raw figures here (rewritten after each part)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    ap.add_argument("--smoke", action="store_true", help="CPU self-check: tiny backbone, small sizes, no write")
    args = ap.parse_args()
    if args.smoke:
        args.backbone, args.batches, args.variant_batches = "tiny", [1, 4], [4]
        args.volume, args.volume_batch, args.train_batch = [96, 6], 4, 4
        args.min_s, args.min_calls, args.no_write = 0.0, 1, True
        device = "cpu"
    elif not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        sys.exit(2)
    else:
        device = "cuda"

    import medad
    from common import command_line, machine, update_section
    from medad.model.precision import resolve_precision

    b = Bench(device, args.budget_s, args.min_s, args.min_calls)
    det32 = medad.load_detector(backbone=args.backbone, weights="random", device=device, precision="fp32")
    det16 = copy.deepcopy(det32)
    det16.precision = "bf16"
    dets = {"fp32": det32, "bf16": det16}
    images = torch.rand(max(args.batches + args.variant_batches), 3, 240, 240,
                        generator=torch.Generator().manual_seed(0)).to(device)
    gpu = torch.cuda.get_device_name(0) if b.cuda else "CPU (smoke test)"
    header = (f"Command: `{command_line()}`\n\nMachine: {machine()}; {gpu}"
              + (f", {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                 f"bf16 supported: {torch.cuda.is_bf16_supported()}" if b.cuda else "")
              + f".\n\nBackbone {args.backbone} with random weights at 240 px (inference on GPU-resident slices, "
              "median of >= "
              f"{args.min_calls} calls and >= {args.min_s:.0f} s per row after a warm-up call).")

    def publish():
        body = render(b, args, header)
        if args.json:
            args.json.write_text(json.dumps(b.rows, indent=1, default=str))
        if not args.no_write:
            update_section("GPU (CUDA)", body)
        return body

    ref = {}
    for part in args.parts:
        if part != "inference" and b.left() <= 0:
            b.note(f"part {part}: skipped (time budget of {args.budget_s:.0f} s spent)")
            continue
        if part == "inference":
            ref = part_inference(b, dets, images, args.batches)
        elif part == "volume":
            part_volume(b, dets[resolve_precision("auto", device)], args.volume[1], args.volume[0], args.volume_batch)
        elif part == "train":  # on copies: the optimizer steps change the adapters
            part_train(b, copy.deepcopy(det32), copy.deepcopy(dets[resolve_precision("auto", device)]),
                       args.train_batch, args.epochs)
        elif part == "variants":
            part_variants(b, dets, images, args.variant_batches, ref)
        elif part == "compile":
            vb = sorted(args.variant_batches)
            part_compile(b, dets, images, [("bf16", vb[-1])] + [("bf16", x) for x in vb[:-1]] + [("fp32", vb[-1])], ref)
        else:
            raise SystemExit(f"unknown part {part!r}")
        publish()
    print(publish())


if __name__ == "__main__":
    main()
