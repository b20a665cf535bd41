#!/usr/bin/env python
"""Train the embedded demo model from nothing: a tiny CLIP pre-trained on phantoms, then MVFA adapters on top.

    python scripts/train_demo_model.py             # writes medad/assets/demo-tiny-phantom.pt (+ SHA256SUMS)
    python scripts/train_demo_model.py --check     # held-out figures of the installed demo model -> BENCHMARKS.md

DEMO WEIGHTS TRAINED ON SYNTHETIC PHANTOMS, NOT FOR CLINICAL USE. Every step is seeded; the seeds of each stage are
disjoint (constants below), and none of them is used anywhere else in the repository.

1. **Slices.** CT head and FLAIR-like MR brain phantoms (:mod:`medad.synthetic.phantoms`) go through the volume
   runner's own preprocessing (a capturing stand-in detector records the exact model inputs of
   :class:`medad.inference.VolumeRunner` with the ``medad score`` defaults), so training sees what inference sees.
2. **Pre-training** (:mod:`medad.training.contrastive`): the ``tiny`` CLIP (vision + text tower) learns from
   image-text pairs, the way CLIP was trained: each slice with a generated caption (:mod:`medad.synthetic.captions`:
   modality, each lesion's density, size and place), plus RegionCLIP-style region-text pairs (a lesion's
   cross-section or a window of normal tissue against concept texts).
3. **MVFA** on top, as the method prescribes: backbone frozen, the multi-level adapters trained with the MVFA loss
   against the prompt-ensemble text features of the pre-trained text tower (:func:`medad.training.fit_adapters`),
   best epoch picked on the validation phantoms; then the min-max normalizers and the map smoothing, also on them.
4. **Calibration** (:mod:`medad.evaluation.calibration`): the operating point at 95 % specificity and calibrated
   scores, on normal phantoms scored with the ``medad score`` defaults.
5. **Held-out check** on phantoms never seen: voxel AUROC inside the head, and whether each top-3 slice holds a lesion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from sklearn.metrics import roc_auc_score

import medad
from medad.checkpoints import save_checkpoint
from medad.evaluation.calibration import calibrate
from medad.inference import VolumeRunner
from medad.model.backbone import build_clip, get_backbone_config
from medad.model.prompts import encode_prompt_ensemble
from medad.synthetic.captions import caption, lesion_regions
from medad.synthetic.phantoms import head_mask, make_ct_phantom, make_mr_phantom
from medad.training.contrastive import CaptionedSlices, PretrainConfig, pretrain_clip
from medad.training.features import features_from_tensors
from medad.training.fit import Selector, TrainConfig, fit_adapters, reset_adapters

REPO = Path(__file__).resolve().parents[1]
ASSET = REPO / "medad" / "assets" / "demo-tiny-phantom.pt"
LABEL = "demo weights trained on synthetic phantoms, not for clinical use"
MAKERS = {"CT": make_ct_phantom, "MR": make_mr_phantom}
PRETRAIN_SEEDS = range(1000, 1100)   # per modality; lesion count drawn from a seeded generator
ADAPTER_SEEDS = range(1000, 1016)    # the first 16 of them, four lesions each, for the MVFA adapters
VAL_SEEDS = range(2000, 2003)        # model selection: best adapter epoch, normalizers, smoothing
HELDOUT_SEEDS = range(3000, 3008)    # the recorded held-out figures
CAL_SEEDS = range(4000, 4020)        # normal phantoms for the operating point
GRID = 17                            # patch grid of the tiny backbone at 240 px (patch 14)
CONCEPTS = [(m, k) for m in ("CT", "MR") for k in ("normal", "hyperdense", "hypodense", "hyperintense", "hypointense")]


class _Capture:
    """Stand-in detector: records the model inputs the volume runner produces, returns zero maps."""

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def predict(self, x: torch.Tensor):
        self.batches.append(x[:, :1].detach().to(torch.float16))
        zeros = torch.zeros(x.shape[0], x.shape[-2], x.shape[-1])
        return type("R", (), {"anomaly_maps": zeros, "image_scores": torch.zeros(x.shape[0])})()


def _volume(arr: np.ndarray, affine: np.ndarray, modality: str | None) -> MetaTensor:
    return MetaTensor(torch.as_tensor(arr, dtype=torch.float32)[None], affine=torch.as_tensor(affine),
                      meta={"modality": modality} if modality else {})


def runner_slices(modality: str, seed: int, n_lesions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs ``[S, 1, 240, 240]`` (float16 grey) and masks ``[S, 240, 240]`` (bool) of one phantom.

    Background-only slices (the runner skips them) are dropped.
    """
    image, mask, affine = MAKERS[modality](seed, n_lesions=n_lesions)
    cap_i, cap_m = _Capture(), _Capture()
    VolumeRunner(cap_i, batch_size=64, skip_empty=False).run(_volume(image, affine, modality))
    VolumeRunner(cap_m, batch_size=64, skip_empty=False, intensity="none").run(_volume(mask.astype(np.float32),
                                                                                        affine, None))
    x, m = torch.cat(cap_i.batches), torch.cat(cap_m.batches)[:, 0] > 0.5
    keep = x.flatten(1).amax(1) > 1e-3
    return x[keep], m[keep]


def captioned_slices(seeds, seed: int = 0) -> CaptionedSlices:
    """Pre-training material from CT + MR phantoms of ``seeds`` (1-6 lesions each, seeded)."""
    rng = np.random.default_rng(seed)
    images, metas, concepts, meanings = [], [], [], {}
    for s in seeds:
        for modality in MAKERS:
            x, m = runner_slices(modality, s, int(rng.integers(1, 7)))
            for i in range(len(x)):
                grey, lesion = x[i, 0].float().numpy(), m[i].numpy()
                found = lesion_regions(grey, lesion, modality)
                findings = tuple(sorted(f for _, f in found))
                metas.append((modality, findings, meanings.setdefault((modality, findings), len(meanings))))
                concepts.append(_patch_concepts(grey, lesion, found, modality))
                images.append(x[i])

    def describe(i: int, wording: random.Random) -> str:
        modality, findings, _ = metas[i]
        return caption(findings, modality, wording)

    texts = [f"normal brain tissue on a {m} of the head." if k == "normal" else f"a {k} lesion in the brain on a {m}."
             for m, k in CONCEPTS]
    return CaptionedSlices(images=torch.stack(images), groups=torch.tensor([g for _, _, g in metas]),
                           caption=describe, patch_concept=torch.stack(concepts), concepts=texts,
                           normal_concepts=[i for i, (_, k) in enumerate(CONCEPTS) if k == "normal"])


def _patch_fraction(region: np.ndarray) -> torch.Tensor:
    """``[H, W]`` region at 240 px -> ``[GRID*GRID]`` fraction of each patch it covers."""
    r = torch.as_tensor(region, dtype=torch.float32)[None, None, :GRID * 14, :GRID * 14]
    return F.avg_pool2d(r, 14).flatten()


def _patch_concepts(grey: np.ndarray, lesion: np.ndarray, found, modality: str) -> torch.Tensor:
    """``[GRID*GRID]`` concept of each patch: a lesion kind where a lesion covers >= half of it, normal tissue where
    none touches it and the patch holds tissue (mean intensity > 0.05), else -1 (not trained)."""
    out = torch.full((GRID * GRID,), -1, dtype=torch.long)
    tissue = _patch_fraction(grey) > 0.05
    out[tissue & (_patch_fraction(lesion) == 0)] = CONCEPTS.index((modality, "normal"))
    for comp, finding in found:
        out[_patch_fraction(comp) >= 0.5] = CONCEPTS.index((modality, finding[0]))
    return out


def state_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's tensors (names, dtypes, shapes, bytes): the identity of the pre-trained backbone."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        v = v.detach().cpu().contiguous()
        h.update(f"|{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def detector_on(clip) -> "medad.AnomalyDetector":
    """An MVFA detector on the pre-trained vision tower, with the pre-trained text tower's prompt features."""
    det = medad.load_detector(backbone="tiny", object_name="Brain", precision="fp32")
    det.model.visual.load_state_dict(clip.visual.state_dict())
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
    with torch.no_grad():
        det.text_features.copy_(encode_prompt_ensemble(clip.encode_text, tokenizer, "Brain"))
    det.metadata["backbone_sha256"] = state_sha256(det.model.visual)
    # the backbone learnt on CLIP-normalized inputs (as CLIP does); MVFA's reference feeds [0, 1] RGB unnormalized
    # (the detector's default), which this backbone has never seen: the demo model turns the normalization on
    det.options.normalize_input = True
    return det


def reuse_pretrained(path: Path) -> tuple["medad.AnomalyDetector", dict]:
    """Stages 1-2 from an earlier run's checkpoint: its backbone, text features and input normalization, fresh
    adapters (stage 3 on). Returns the detector and that run's pre-training record."""
    det = medad.load_detector(adapters=path, precision="fp32")
    prov = dict(det.metadata)
    reset_adapters(det, 0)
    det.options.calibration = None
    det.options.normalize_input = True
    times = {k: v for k, v in (prov.get("train_seconds") or {}).items() if k in ("slices", "pretrain")}
    return det, {"pretrain": prov["pretrain"], "train_seconds": times, "pretrained_from": hashlib.sha256(
        path.read_bytes()).hexdigest()}


def adapter_slices(seeds, n_lesions: int = 4, balance_seed: int = 0):
    """``(x [S,3,240,240], masks [S,1,240,240], labels [S])`` of CT + MR phantoms; lesion slices + as many normals."""
    xs, ms = [], []
    for s in seeds:
        for modality in MAKERS:
            x, m = runner_slices(modality, s, n_lesions)
            xs.append(x)
            ms.append(m)
    x, m = torch.cat(xs).float().expand(-1, 3, -1, -1), torch.cat(ms)[:, None].float()
    y = (m.flatten(1).amax(1) > 0).long()
    if balance_seed is not None:
        pos, neg = (y == 1).nonzero().flatten(), (y == 0).nonzero().flatten()
        neg = neg[torch.randperm(len(neg), generator=torch.Generator().manual_seed(balance_seed))[:len(pos)]]
        keep = torch.cat([pos, neg])
        x, m, y = x[keep], m[keep], y[keep]
    return x.contiguous(), m, y


def heldout(det, seeds=HELDOUT_SEEDS) -> dict:
    """Per modality and phantom: voxel AUROC inside the head and lesion hits among the top-3 slices (runner defaults)."""
    runner, out = VolumeRunner(det), {}
    for modality, maker in MAKERS.items():
        aurocs, hits, labels, values = [], [], [], []
        for s in seeds:
            image, mask, affine = maker(s)
            res = runner.run(_volume(image, affine, modality))
            head, amap = head_mask(image, modality), res.anomaly_map[0].numpy()
            labels.append(mask[head] > 0)
            values.append(amap[head])
            aurocs.append(float(roc_auc_score(labels[-1], values[-1])))
            lesion_slices = mask.any((0, 1))
            hits.append(int(sum(bool(lesion_slices[t]) for t in res.top_slices[:3])))
        out[modality] = {"voxel_auroc_in_head": [round(a, 4) for a in aurocs], "min": round(min(aurocs), 4),
                         "pooled": round(float(roc_auc_score(np.concatenate(labels), np.concatenate(values))), 4),
                         "top3_slices_with_lesion": hits}
    return out


def tune_smoothing(det, grid=(0.0, 2.0, 4.0, 8.0)) -> dict:
    """Pick ``det.options.smoothing_sigma`` on the validation phantoms (mean of CT and MR worst-case AUROC)."""
    scores = {}
    for sigma in grid:
        det.options.smoothing_sigma = sigma
        r = heldout(det, VAL_SEEDS)
        scores[sigma] = (r["CT"]["min"] + r["MR"]["min"]) / 2
        print(f"smoothing sigma {sigma}: validation {json.dumps(r)}", flush=True)
    det.options.smoothing_sigma = max(scores, key=scores.get)
    return {str(k): v for k, v in scores.items()}


def calibrate_demo(det, specificity: float = 0.95) -> dict:
    """Operating point + calibrated scores on normal CT + MR phantoms (``CAL_SEEDS``), with the runner defaults."""
    def normal(modality: str, seed: int) -> MetaTensor:
        image, _, affine = MAKERS[modality](seed, n_lesions=0)
        return _volume(image, affine, modality)

    cases = [(modality, s) for s in CAL_SEEDS for modality in MAKERS]
    studies = [lambda c=c: normal(*c) for c in cases]
    keys = [f"{modality}-{s}" for modality, s in cases]
    report = calibrate(det, studies, specificity=specificity, keys=keys, batch_size=32)
    return {**report.summary(), "seeds": list(CAL_SEEDS), "studies": "normal CT head + MR brain phantoms"}


def write_sums(asset: Path) -> None:
    """Record the asset's SHA-256 in ``medad/assets/SHA256SUMS`` (checked by ``load_detector(adapters="demo")``)."""
    sums = asset.parent / "SHA256SUMS"
    lines = [ln for ln in (sums.read_text().splitlines() if sums.is_file() else []) if ln.strip()
             and ln.split()[1] != asset.name]
    lines.append(f"{hashlib.sha256(asset.read_bytes()).hexdigest()}  {asset.name}")
    sums.write_text("\n".join(sorted(lines, key=lambda s: s.split()[1])) + "\n")


def check(asset: Path) -> int:
    """Held-out figures of ``asset`` and of the baseline, measured now; the training runtime recorded in ``asset``."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import command_line, cpu_flags_line, git_rev, machine, update_section

    det = medad.load_detector(adapters=asset, precision="fp32")
    t = time.time()
    demo = heldout(det)
    seconds = time.time() - t
    base = heldout(medad.load_detector(backbone="tiny", object_name="Brain", precision="fp32"))
    prov = det.metadata
    rows = []
    for name, r in (("demo model", demo), ("baseline: untrained adapters, random tiny backbone", base)):
        for modality in MAKERS:
            v = r[modality]
            rows.append(f"| {name} | {modality} | {v['pooled']:.4f} | {v['min']:.4f} | "
                        f"{sum(h == 3 for h in v['top3_slices_with_lesion'])}/{len(v['top3_slices_with_lesion'])} |")
    n = len(HELDOUT_SEEDS)
    times = prov.get("train_seconds", {})
    reused = ("\nThe slices and pre-training stages ran in an earlier invocation of the same script; the adapter stages "
              "reused its backbone with `--pretrained` (checkpoint SHA-256 "
              f"`{prov['pretrain']['reused_from_checkpoint_sha256'][:16]}...`)."
              if prov.get("pretrain", {}).get("reused_from_checkpoint_sha256") else "")
    body = f"""Command: `{command_line()}` (git {git_rev()}); the training itself: `python scripts/train_demo_model.py`.
Machine: {machine()}; {cpu_flags_line()}.

Held-out phantoms: seeds {HELDOUT_SEEDS.start}-{HELDOUT_SEEDS.stop - 1} ({n} CT head + {n} MR brain, 3 lesions each,
never used to train, select or calibrate), scored by the volume runner with the `medad score` defaults (fp32).
Voxel AUROC of the 3D map against the lesion mask, inside the head only; "top-3 all lesions": phantoms whose three
most anomalous slices all hold a lesion. Scoring the {2 * n} held-out volumes took {seconds:.1f} s.

| model | modality | voxel AUROC in head, all phantoms pooled | worst phantom | top-3 all lesions |
|---|---|---:|---:|---:|
""" + "\n".join(rows) + f"""

Training run recorded in the asset (`train_seconds`, wall seconds per stage on the machine that trained it):
{", ".join(f"{k} {v:.0f} s" for k, v in times.items())}; total {sum(times.values()) / 60:.1f} min.{reused}
Operating point (normal phantoms, seeds {CAL_SEEDS.start}-{CAL_SEEDS.stop - 1}): raw volume score
{prov["calibration"]["threshold_raw"]:.4f} at {prov["calibration"]["specificity"]:.0%} specificity, false-positive bound
{prov["calibration"]["fpr_bound"]:.3f} ({prov["calibration"]["fpr_bound_95"]:.3f} for 95 % of calibration sets).
Asset `{asset.name}`: {asset.stat().st_size / 1e6:.2f} MB, SHA-256 `{hashlib.sha256(asset.read_bytes()).hexdigest()}`.
"""
    update_section("Demo model (synthetic phantoms)", body)
    print(body)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ASSET))
    p.add_argument("--check", action="store_true",
                   help="measure the held-out figures of --out against untrained adapters on the random tiny "
                        "backbone (same phantoms, same run) and write them to BENCHMARKS.md")
    p.add_argument("--pretrain-epochs", type=int, default=16)
    p.add_argument("--adapter-epochs", type=int, default=12)
    p.add_argument("--pretrained", type=Path, default=None,
                   help="skip stages 1-2: reuse the pre-trained backbone of an earlier run's checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.check:
        return check(out)
    t0, times, mark = time.time(), {}, [time.time()]

    def lap(name: str) -> None:
        times[name] = round(time.time() - mark[0], 1)
        mark[0] = time.time()
        print(f"[{name}] {times[name]} s", flush=True)

    if args.pretrained:
        det, earlier = reuse_pretrained(args.pretrained)
        pretrain = earlier["pretrain"]
        times.update(earlier["train_seconds"])  # recorded by the run that pre-trained
        pretrain["reused_from_checkpoint_sha256"] = earlier["pretrained_from"]
    else:
        data = captioned_slices(PRETRAIN_SEEDS)
        print(f"pre-training slices {len(data)}, trained patches {int((data.patch_concept >= 0).sum())}", flush=True)
        lap("slices")
        clip = build_clip(get_backbone_config("tiny"))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
        # every adapter level's tokens are aligned (the last one's through ln_post), as MVFA reads all of them
        pconf = PretrainConfig(epochs=args.pretrain_epochs,
                               region_levels=tuple(get_backbone_config("tiny")["adapter_levels"][:-1]))
        history = pretrain_clip(clip, data, tokenizer, pconf,
                                on_epoch=lambda e, r: print(f"pre-train epoch {e}: {json.dumps(r)}", flush=True))
        pretrain = {"seeds": [PRETRAIN_SEEDS.start, PRETRAIN_SEEDS.stop - 1], "config": vars(pconf),
                    "history": history}
        del data
        lap("pretrain")
        det = detector_on(clip)
        reset_adapters(det, 0)
    x, m, y = adapter_slices(ADAPTER_SEEDS)
    xv, mv, yv = adapter_slices(VAL_SEEDS, balance_seed=None)
    train = features_from_tensors(det, x, y, m)
    sel = Selector(features_from_tensors(det, xv, yv, mv), det.text_features[None], "phantom-valid")
    tconf = TrainConfig(epochs=args.adapter_epochs, batch_size=16, seed=0, progress=False, precision="fp32")
    _, best = fit_adapters(det, train, det.text_features[None], tconf, 1e-3, [sel],
                           on_epoch=lambda e, r: print(f"adapter epoch {e}: loss {r['loss']:.4f} validation pixel "
                                                       f"AUROC {r.get('phantom-valid/pixel_auroc', 0):.4f}", flush=True))
    det.fit_normalizers(xv, batch_size=32)
    del x, m, xv, mv, train, sel
    smoothing = tune_smoothing(det)
    lap("adapters")
    calibration = calibrate_demo(det)
    lap("calibration")
    result = heldout(det)
    print("held-out:", json.dumps(result), flush=True)
    lap("heldout")
    prov = {"label": LABEL, "medad_version": medad.__version__, "backbone": "tiny",
            "backbone_sha256": det.metadata["backbone_sha256"], "protocol": "demo", "mode": "demo",
            "protocol_label": "tiny CLIP pre-trained on phantom image-text pairs + MVFA adapters (supervised)",
            "pretrain": pretrain,
            "adapters": {"seeds": list(ADAPTER_SEEDS), "epochs": args.adapter_epochs, "best_epoch": best, "lr": 1e-3},
            "validation_seeds": list(VAL_SEEDS), "smoothing_sigma": det.options.smoothing_sigma,
            "smoothing_validation": smoothing, "calibration": calibration, "heldout_seeds": list(HELDOUT_SEEDS),
            "heldout": result, "preprocessing": "VolumeRunner defaults (intensity auto, radiological view)",
            "train_seconds": times}
    save_checkpoint(det, out, extra=prov, include_backbone=True)
    if out.resolve() == ASSET.resolve():
        write_sums(out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"saved {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}...) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
