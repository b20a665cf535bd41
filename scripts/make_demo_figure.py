#!/usr/bin/env python
"""Regenerate the README picture: ``make demo``'s most anomalous slice of each sample series, with the lesion outline.

    python scripts/make_demo_figure.py            # writes docs/img/demo_top_slices.png

Scores ``sample_data/`` with the ``medad score`` defaults (the embedded demo model) into a temporary folder, takes the
top-1 PNG overlay of each series (as ``medad score`` draws it) and puts them side by side, each under a line that
says whether the phantom's true lesion mask has a lesion on that slice.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from medad.batch import score

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
OUT = REPO / "docs" / "img" / "demo_top_slices.png"
MASKS = {"CT": SAMPLE / "ct_head_phantom" / "lesion_mask.nii.gz", "MR": SAMPLE / "mr_flair_phantom" / "lesion_mask.nii.gz"}


def _labelled(png: Path, label: str) -> Image.Image:
    img = Image.open(png).convert("RGB")
    img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)  # the overlays are at the source resolution
    framed = Image.new("RGB", (img.width, img.height + 22), (0, 0, 0))
    framed.paste(img, (0, 22))
    ImageDraw.Draw(framed).text((6, 5), label, fill=(255, 255, 255))
    return framed


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        summary = score([SAMPLE], Path(tmp) / "out", workers=0, progress=False)
        if summary.n_scored != 2:
            print(f"expected 2 scored series, got {summary.n_scored}", file=sys.stderr)
            return 1
        with open(Path(tmp) / "out" / "results.csv", newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
        panels = []
        for row in sorted(rows, key=lambda r: r["modality"] != "CT"):
            folder = Path(tmp) / "out" / row["output_dir"]
            top = int(row["top_slices"].split()[0])
            png = sorted(folder.glob("top1_slice*.png"))[0]
            kind = "CT" if row["modality"] == "CT" else "MR"  # the sample MR is a NIfTI: no modality tag
            mask = np.asarray(nib.load(MASKS[kind]).dataobj) > 0
            label = (f"{kind} top slice {top + 1}: lesion {'yes' if mask[..., top].any() else 'no'}; "
                     f"volume score {float(row['volume_score']):.2f}, flagged {row['flagged']}")
            panels.append(_labelled(png, label))
    height = max(p.height for p in panels)
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (0, 0, 0))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + 8
    OUT.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(OUT)
    print(f"wrote {OUT.relative_to(REPO)} ({canvas.width}x{canvas.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
