"""``medad score INPUT... --out DIR``: score every series of a PACS export (resumable, accountable, distributed).

See :mod:`medad.batch`. Exit code: 0 when every series that could be scored was scored and no input was damaged,
1 when some series or files failed or the output folder filled up during the run (the summary and
``results.csv``/``manifest.jsonl`` say which and why; rerun to finish), 2 for usage errors (bad arguments, ``--out``
a file or not writable, an output folder made with other settings).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "score", help="score every DICOM series / NIfTI volume under folders (batch, resumable)",
        description="Index every file under INPUT (DICOM series, NIfTI), score each series with the anomaly "
                    "detector and write per series a NIfTI map, top-slice PNG overlays (and DICOM PM + SEG with "
                    "--dicom-out), plus results.csv (one row per series), manifest.jsonl (one line per input file) "
                    "and report.html. Rerun the same command to finish an interrupted run. Scale out with "
                    "`torchrun --nproc_per_node N -m medad score ...`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="folders (walked recursively) and/or files")
    p.add_argument("--out", "-o", required=True, help="output folder")
    m = p.add_argument_group("model")
    m.add_argument("--adapters", default="demo",
                   help="adapter checkpoint, 'demo' (embedded demo model, not for clinical use) or 'none'")
    m.add_argument("--backbone", default=None, help="'ViT-L-14-336' or 'tiny' (default: the checkpoint's)")
    m.add_argument("--weights", default=None, help="backbone weights file (default: the imported cache file)")
    m.add_argument("--object-name", default=None, help="prompt object name (default: the checkpoint's)")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    m.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="backbone precision; auto = bf16 where the device computes it natively (CUDA with bf16, "
                        "CPUs with AMX-BF16/AVX512-BF16), else fp32 (default: auto)")
    m.add_argument("--batch-size", type=int, default=None, help="slices per model call (default: sized to device)")
    m.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"])
    m.add_argument("--intensity", default="auto", help="auto, ct:brain, ct:brain,soft_tissue,bone, mr, percentile")
    m.add_argument("--top-k", type=int, default=5, help="top slices reported and averaged into the volume score")
    m.add_argument("--overlays", type=int, default=3, help="PNG overlays per series (of the top slices)")
    f = p.add_argument_group("selection")
    f.add_argument("--modality", default=None, help="keep only these modalities, e.g. CT or CT,MR")
    f.add_argument("--body-part", default=None, help="keep only these BodyPartExamined values, e.g. HEAD,BRAIN")
    f.add_argument("--series-description", default=None, help="keep series whose description matches this regex")
    f.add_argument("--exclude", action="append", default=None, metavar="GLOB",
                   help="do not score files matching this glob (path or name), e.g. '*mask*'; repeatable")
    o = p.add_argument_group("outputs and run")
    o.add_argument("--dicom-out", action="store_true", help="also write a DICOM Parametric Map + BINARY SEG")
    o.add_argument("--pm", default="float", choices=["float", "integer", "both"],
                   help="Parametric Map pixels: float32, or uint16 with a Real World Value Mapping to the 0-1 score "
                        "(for PACS/viewers that cannot show float pixels), or both")
    o.add_argument("--show-paths", action="store_true",
                   help="name non-DICOM inputs by path and keep file/folder names in errors in results.csv, "
                        "report.html, summary.json and the output (default: UIDs and anonymous keys only; the "
                        "manifest always lists the paths)")
    o.add_argument("--stow", default=None, metavar="URL",
                   help="send PM + SEG to this DICOMweb root (e.g. http://127.0.0.1:8042/dicom-web); implies "
                        "--dicom-out")
    o.add_argument("--workers", type=int, default=None, help="decoding processes (default: half the CPUs, <= 4)")
    o.add_argument("--overwrite", action="store_true", help="accept an --out folder made with other settings (model, axis, top-k, --dicom-out...) and rescore it")
    o.add_argument("--keep-failed", action="store_true", help="do not retry series that failed in an earlier run")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--dry-run", action="store_true",
                   help="index and plan only: write manifest.jsonl/results.csv with what would be scored, score nothing")
    return p


def run(args: argparse.Namespace) -> int:
    from ..batch import OutputWriteError, ScoreConfigError, score

    try:
        summary = score(
            args.inputs, args.out, adapters=None if str(args.adapters).lower() == "none" else args.adapters,
            backbone=args.backbone, weights=args.weights, object_name=args.object_name,
            modality=args.modality, body_part=args.body_part, series_description=args.series_description,
            exclude=args.exclude,
            dicom_out=args.dicom_out, stow=args.stow, workers=args.workers, device=args.device,
            batch_size=args.batch_size, top_k=args.top_k, overlays=args.overlays, axis=args.axis,
            intensity=args.intensity, precision=args.precision, overwrite=args.overwrite,
            retry_failed=not args.keep_failed, progress=not args.no_progress, dry_run=args.dry_run,
            pm=args.pm, show_paths=args.show_paths)
    except (ScoreConfigError, FileNotFoundError, ValueError) as e:
        print(f"medad score: error: {e}", file=sys.stderr)
        return 2
    except OutputWriteError as e:
        print(f"medad score: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medad score: interrupted; finished series are kept in {args.out}. Rerun the same command to score "
              "the rest.", file=sys.stderr)
        return 130
    import torch.distributed as dist

    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    if main and args.dry_run:
        print(summary.text())
        pending = summary.files_by_status.get("pending", 0)
        print(f"dry run: {summary.n_selected - summary.n_reused} series ({pending} files) would be scored; "
              f"{summary.n_reused} are done already. manifest.jsonl/results.csv show the plan.")
        return 0
    if main:
        print(summary.text())
        print(summary.verdict())
    from ..training.distributed import cleanup

    cleanup()
    return summary.exit_code
