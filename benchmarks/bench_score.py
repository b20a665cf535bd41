"""Benchmark ``medad score``: series/min, slices/s and peak RSS with the tiny backbone for 0, 1 and 2 decoding workers.

A generated export of ``--series`` CT phantom series (``--shape`` voxels each, two studies, every other series RLE
compressed) is scored from scratch once per worker count, each run in a fresh process so peak RSS is per run.
``workers=0`` decodes in the main process (no overlap) and is the baseline for the overlap of decoding and model.

Usage::

    python benchmarks/bench_score.py                          # 24 series of 128x128x40, workers 0 1 2
    python benchmarks/bench_score.py --series 40 --workers 1 2 --write BENCHMARKS.md

The results go to ``BENCHMARKS.md`` under ``## Batch scoring`` (that section only is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECTION = "## Batch scoring"


def make_export(root: Path, n_series: int, shape: tuple[int, int, int]) -> tuple[int, int]:
    """Write ``n_series`` CT series; returns (files, slices)."""
    from pydicom.uid import generate_uid

    from medad.synthetic import make_ct_phantom
    from medad.synthetic.phantoms import write_dicom_series

    studies = [generate_uid(entropy_srcs=["bench-score", str(i)]) for i in range(2)]
    files = 0
    for i in range(n_series):
        hu, _, aff = make_ct_phantom(100 + i, shape, n_lesions=2 if i % 3 else 0)
        paths = write_dicom_series(hu, aff, root / f"study{i % 2}" / f"series{i:03d}", seed=f"bench{i}",
                                   series_number=i + 1, study_uid=studies[i % 2],
                                   transfer_syntax="rle" if i % 2 else None)
        files += len(paths)
    return files, n_series * shape[2]


def child(args) -> None:
    """One timed run in this process; prints a JSON line."""
    import torch

    from medad.batch import score

    torch.set_num_threads(max(1, int(args.threads)))
    r0, k0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = r0.ru_utime + r0.ru_stime + k0.ru_utime + k0.ru_stime  # imports excluded
    t = time.perf_counter()
    s = score([args.export], args.out, adapters=None, backbone="tiny", workers=args.child_workers, device="cpu",
              batch_size=args.batch_size, progress=False)
    dt = time.perf_counter() - t
    stages = {"load": 0.0, "score": 0.0, "write": 0.0}
    for rec in Path(args.out).glob("series/*/record.json"):
        for k, v in json.loads(rec.read_text()).get("seconds", {}).items():
            stages[k] = stages.get(k, 0.0) + v
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"workers": args.child_workers, "seconds": dt, "series": s.n_scored, "slices": s.n_slices,
                      "failed": s.n_failed, "rss_main_mb": me.ru_maxrss / 1024, "stages": stages,
                      "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime - cpu0}))


def run_sampled(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; return (stdout, peak total PSS in MB of its process tree, sampled every 0.1 s).

    PSS (proportional set size) splits shared pages between the processes sharing them, so the sum over the main
    process and its forked decoding workers is the real memory footprint (RSS would count torch's pages once per
    forked worker).
    """
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    root, peak = psutil.Process(proc.pid), 0.0
    while proc.poll() is None:
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total / 2**20)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise RuntimeError(f"benchmark run failed: {' '.join(cmd)}")
    return out, peak


def write_section(path: Path, text: str) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", type=int, default=24)
    p.add_argument("--shape", type=int, nargs=3, default=(128, 128, 40))
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in the main process")
    p.add_argument("--write", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"),
                   help="markdown file to update ('' = print only)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--child-workers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        export = Path(tmp) / "export"
        t = time.perf_counter()
        n_files, n_slices = make_export(export, args.series, tuple(args.shape))
        print(f"export: {args.series} series, {n_files} files, {n_slices} slices ({time.perf_counter() - t:.1f} s)")
        rows = []
        for w in args.workers:
            cmd = [sys.executable, __file__, "--child", "--export", str(export), "--out", f"{tmp}/out{w}",
                   "--child-workers", str(w), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            load0 = os.getloadavg()[0]
            stdout, pss = run_sampled(cmd)
            r = json.loads(stdout.strip().splitlines()[-1])
            r["pss_total_mb"] = pss
            r["load"] = (load0 + os.getloadavg()[0]) / 2
            rows.append(r)
            print(f"workers={w}: {r['series']} series in {r['seconds']:.1f} s = {60 * r['series'] / r['seconds']:.1f} "
                  f"series/min, {r['slices'] / r['seconds']:.1f} slices/s, {r['cpu_s']:.0f} CPU s, peak RSS main {r['rss_main_mb']:.0f} MB, "
                  f"peak PSS all processes {r['pss_total_mb']:.0f} MB (load avg {r['load']:.1f})")
            assert r["series"] == args.series and r["failed"] == 0, r

    x, y, z = args.shape
    lines = [
        SECTION, "",
        f"`python benchmarks/bench_score.py --series {args.series} --shape {x} {y} {z} --workers "
        f"{' '.join(map(str, args.workers))}` ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {args.threads}, CPU only).", "",
        f"Generated export: {args.series} CT phantom series of {x}x{y}x{z} (every other one RLE-compressed), "
        f"{n_files} files, {n_slices} slices; tiny backbone (random init, the speed is that of any adapters), "
        f"slice batch {args.batch_size}; each run from scratch (index + decode + score + NIfTI/PNG writes + tables) "
        "in a fresh process. `workers` = DICOM decoding processes (0 = decode in the main process, no overlap).", "",
        "| workers | wall s | series/min | slices/s | vs first row | CPU s (all processes) | decode / model / write s "
        "| peak RSS main process (MB) | peak PSS main + workers (MB) | load avg |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['seconds']:.1f} | {60 * r['series'] / r['seconds']:.1f} | "
                     f"{r['slices'] / r['seconds']:.1f} | {rows[0]['seconds'] / r['seconds']:.2f}x | {r['cpu_s']:.0f} | "
                     f"{r['stages']['load']:.1f} / {r['stages']['score']:.1f} / {r['stages']['write']:.1f} | "
                     f"{r['rss_main_mb']:.0f} | "
                     f"{r['pss_total_mb']:.0f} | {r['load']:.1f} |")
    lines += ["", "decode / model / write: summed per-series wall times from the records (decoding runs in the "
              "workers, overlapped with the model when workers > 0; writing runs in a background thread overlapped "
              "with the next series).", "Peak RSS is the main process's (`ru_maxrss`); peak PSS sums the proportional set size of the main "
              "process and its decoding workers (sampled every 0.1 s), i.e. the real footprint of the run, since "
              "forked workers share torch's pages.", "The load average column shows how busy the machine was (other jobs share its CPUs): with a load "
              "well above the CPU count the wall-clock figures are several times slower than on an idle machine; "
              "the CPU seconds (user + system of the run and its workers, imports excluded) are less sensitive to "
              "that. On a 2-CPU machine decoding workers compete with the model's threads, so the gain from "
              "overlap is bounded by the spare cores.", ""]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(Path(args.write), text)
        print(f"updated {args.write}")


if __name__ == "__main__":
    main()
