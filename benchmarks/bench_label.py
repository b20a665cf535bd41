"""Load on the MONAI Label server: N concurrent inference requests on loopback, latency and server memory.

Starts ``medad label`` (the demo model unless ``--conf`` says otherwise, CPU) on 127.0.0.1 with generated CT
phantom studies, sends one warm-up inference, then ``--requests`` inference requests at once, each as 3D Slicer sends
it (``POST /infer/anomaly?image=<id>``, ``params={"result_extension": ".nrrd", "result_dtype": "uint8"}``, label
map + JSON back), while a sampler records the server's resident memory (process and children, every 0.2 s) and how
long ``GET /info/`` takes. Each answer's ``X-Medad-Queue-Wait`` / ``X-Medad-Run-Time`` headers split its latency
into waiting for the worker and scoring. Writes the "MONAI Label server under load" section of BENCHMARKS.md
(``--no-write``: print only); every sentence of its reading is computed from the numbers of the run.

    python benchmarks/bench_label.py                       # 20 requests, 4 studies of 128x128x32, 1 worker
    python benchmarks/bench_label.py --requests 20 --workers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests" / "label")]

from common import command_line, git_rev, load_average, machine, update_section  # noqa: E402

TITLE = "MONAI Label server under load"


def _rss_mib(pid: int) -> float:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def run(args) -> dict:
    import requests

    from labelkit import medad_label_server, write_phantom_nifti

    tmp = Path(tempfile.mkdtemp(prefix="medad_bench_label_"))
    studies = tmp / "studies"
    studies.mkdir()
    ids = []
    for i in range(args.studies):
        write_phantom_nifti(studies / f"case_{i:02d}.nii.gz", seed=100 + i, shape=tuple(args.shape),
                            spacing=(1.8, 1.8, 4.0))
        ids.append(f"case_{i:02d}")
    conf = {"device": "cpu", "infer_workers": str(args.workers), "infer_queue": str(args.queue),
            **dict(kv.split("=", 1) for kv in args.conf)}
    params = {"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8"})}
    out: dict = {"conf": conf, "ids": ids}
    with medad_label_server(studies, tmp / "workspace", conf, tmp / "run") as url:
        import psutil

        pid = next(c.pid for c in psutil.Process().children() if "label" in " ".join(c.cmdline()))
        t = time.monotonic()
        r = requests.post(f"{url}/infer/anomaly", params={"image": ids[0]}, data=params, timeout=900)
        r.raise_for_status()
        out["warmup_s"] = time.monotonic() - t
        out["rss_before"] = _rss_mib(pid)
        stop = threading.Event()
        samples, info_times = [], []

        def sampler():
            while not stop.is_set():
                samples.append(_rss_mib(pid))
                t0 = time.monotonic()
                try:
                    ok = requests.get(f"{url}/info/", timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                info_times.append((time.monotonic() - t0, ok))
                stop.wait(0.2)

        results = [None] * args.requests
        barrier = threading.Barrier(args.requests + 1)

        def client(k: int):
            barrier.wait()
            t0 = time.monotonic()
            try:
                resp = requests.post(f"{url}/infer/anomaly", params={"image": ids[k % len(ids)]}, data=params,
                                     timeout=3600)
                results[k] = {"status": resp.status_code, "latency": time.monotonic() - t0,
                              "wait": float(resp.headers.get("X-Medad-Queue-Wait", "nan")),
                              "run": float(resp.headers.get("X-Medad-Run-Time", "nan")), "bytes": len(resp.content)}
            except requests.RequestException as e:
                results[k] = {"status": 0, "latency": time.monotonic() - t0, "error": str(e)}

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.requests)]
        for th in threads:
            th.start()
        mon = threading.Thread(target=sampler)
        mon.start()
        out["load_start"] = load_average()
        t_all = time.monotonic()
        barrier.wait()
        for th in threads:
            th.join()
        out["wall_s"] = time.monotonic() - t_all
        stop.set()
        mon.join()
        out["rss_after"] = _rss_mib(pid)
        out["results"] = results
        out["rss_samples"] = samples
        out["info_times"] = info_times
        out["queue_final"] = requests.get(f"{url}/medad/queue", timeout=30).json()
    return out


def report(args, out: dict) -> str:
    res = out["results"]
    ok = [r for r in res if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    runs = [r["run"] for r in ok]
    waits = [r["wait"] for r in ok]
    info = [s for s, good in out["info_times"]]
    info_ok = sum(good for _, good in out["info_times"])
    peak = max(out["rss_samples"] + [out["rss_after"]])
    n = args.requests
    rows = [
        ("requests (at once)", f"{n}"), ("answered 200", f"{len(ok)}"),
        ("refused 503 (queue full)", f"{sum(r['status'] == 503 for r in res)}"),
        ("other answers", f"{sum(r['status'] not in (200, 503) for r in res)}"),
        ("wall time for all (s)", f"{out['wall_s']:.1f}"),
        ("throughput (inferences/min)", f"{60 * len(ok) / out['wall_s']:.1f}"),
        ("latency min / p50 / p90 / max (s)",
         f"{min(lat):.1f} / {_pct(lat, 50):.1f} / {_pct(lat, 90):.1f} / {max(lat):.1f}"),
        ("scoring time per request, mean (s)", f"{statistics.mean(runs):.2f}"),
        ("queue wait min / max (s)", f"{min(waits):.1f} / {max(waits):.1f}"),
        ("first (warm-up) request alone (s)", f"{out['warmup_s']:.1f}"),
        ("server RSS before / peak / after (MiB)", f"{out['rss_before']:.0f} / {peak:.0f} / {out['rss_after']:.0f}"),
        ("`GET /info/` during the load: probes, max, p95 (s)",
         f"{len(info)} ({info_ok} answered 200), {max(info):.3f}, {_pct(info, 95):.3f}"),
    ]
    table = "| | |\n|---|---:|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    workers = int(out["conf"]["infer_workers"])
    mean_run = statistics.mean(runs)
    expected_wall = len(ok) * mean_run / workers
    reading = [
        f"Of {n} requests sent at once, {len(ok)} were answered 200 and "
        f"{sum(r['status'] == 503 for r in res)} refused with 503 (the queue holds "
        f"{out['conf']['infer_queue']} waiting requests, `--conf infer_queue`).",
        f"With {workers} inference worker{'s' if workers > 1 else ''} the requests are scored "
        f"{'one at a time' if workers == 1 else f'{workers} at a time'}: the wall time for all of them, "
        f"{out['wall_s']:.1f} s, is {out['wall_s'] / expected_wall:.2f}x the sum of their scoring times divided by "
        f"the workers ({expected_wall:.1f} s), so queueing adds {max(out['wall_s'] - expected_wall, 0):.1f} s "
        "of overhead in total.",
        f"Latencies ranged from {min(lat):.1f} s to {max(lat):.1f} s ({max(lat) / mean_run:.1f}x the mean scoring "
        f"time of {mean_run:.2f} s); the longest wait for a worker was {max(waits):.1f} s, "
        f"{100 * max(waits) / max(lat):.0f} % of the slowest request's latency.",
        f"The server's resident memory went from {out['rss_before']:.0f} MiB (model loaded, after one inference) to a "
        f"peak of {peak:.0f} MiB with {n} requests in flight (+{peak - out['rss_before']:.0f} MiB, "
        f"{100 * (peak - out['rss_before']) / out['rss_before']:.0f} %, {(peak - out['rss_before']) / n:.1f} MiB per "
        f"request) and was {out['rss_after']:.0f} MiB after the load.",
        f"`GET /info/` kept answering during the load: {info_ok} of {len(info)} probes answered 200, the slowest in "
        f"{max(info):.3f} s.",
    ]
    head = (f"Command: `{command_line()}` (git {git_rev()}). Machine: {machine()}; load average "
            f"{out['load_start']:.1f} at the start.\n\n"
            f"Studies: {args.studies} generated CT phantoms of {'x'.join(map(str, args.shape))} voxels (NIfTI, local "
            f"datastore); model: {out['conf'].get('adapters', 'the demo model')} on CPU; each request as 3D Slicer "
            "sends it (`.nrrd`/`uint8` label map + result JSON); requests released together from "
            f"{n} client threads on loopback.")
    return head + "\n\n" + table + "\n\nReading: " + " ".join(reading) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=(128, 128, 32))
    ap.add_argument("--workers", type=int, default=1, help="--conf infer_workers")
    ap.add_argument("--queue", type=int, default=32, help="--conf infer_queue")
    ap.add_argument("--conf", action="append", default=[], help="more app options KEY=VALUE")
    ap.add_argument("--no-write", action="store_true", help="print the section, do not update BENCHMARKS.md")
    args = ap.parse_args(argv)
    out = run(args)
    body = report(args, out)
    print(body)
    if not args.no_write:
        update_section(TITLE, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
