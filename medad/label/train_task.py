"""The reviewer loop: studies a reviewer marked normal grow the few-shot memory bank (MONAI Label ``TrainTask``),
and a guard keeps a new bank from silently blanking the maps.

A study is *normal* when it has a label with the tag ``normal`` (``mark_normal`` model, ``POST /medad/mark_normal``,
or ``PUT /datastore/label?tag=normal``; the content is ignored) or, with ``empty_final_is_normal`` (the default), an
all-zero ``final`` label (a reviewer cleared the segments and pressed *Submit*). ``POST /train/anomaly`` then:

1. builds a fresh detector from the configured ``adapters`` (+ ``support`` bank), so re-running is idempotent;
2. takes ``shots`` slices of every normal study (the runner's own slice preparation) and adds them to the bank;
3. **refits the memory-bank normalizers** (``pixel_bank``, ``image_bank``: min/max) on the *held-out* slices of the
   normal studies (their slices not in the bank, up to 24 each; the support studies' too): MVFA fuses
   ``0.5 * text + 0.5 * bank``, and a bank branch left unfitted falls back to its theoretical range [0, 4], which
   halves every map (every label gone). The text-branch normalizers come with the adapters and do not change;
4. when the adapters carry an operating point (:class:`medad.model.options.Calibration`, ``medad calibrate``),
   **refits it** on the normal studies (the raw scores change with the bank); with fewer normal studies than the
   specificity needs, the operating point is dropped and the report says so;
5. **guards** the result: on up to ``guard_max_studies`` *known lesion studies* (studies with a non-empty ``final``
   label that are not marked normal, and studies with a reference mask next to them in the studies folder, see
   :class:`~medad.label.datastore.MedadLocalDatastore`) it scores the study with the active model and with the new
   one; if on any of them the new model labels fewer than ``guard_min_kept`` (0.5) of the lesion voxels the active
   model labels, the new checkpoint is **not saved** and the task fails with a message naming the study and the
   numbers (``run_sync``: HTTP 409; asynchronous: status ``ERROR``). Without known lesion studies the guard cannot
   check, and the report says so;
6. otherwise saves adapters + bank + normalizers (+ operating point) to the site checkpoint (``site_checkpoint``),
   which the infer task loads on its next request.

Each run writes its report to ``<workspace>/reviewer_loop.json`` (shown in ``/info`` under
``models.anomaly.medad.reviewer_loop``). Study identifiers are not written to the checkpoint, only their count and a
SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any, Optional

import numpy as np
import torch
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.train import TrainTask

from .config import LabelConfig
from .review import is_empty_label, local_view, normal_images
from .server.errors import Conflict
from .store import DetectorStore, load_source, merge_banks

__all__ = ["NormalBankTrainTask", "guard_check", "lesion_references", "normal_images", "refit_bank_normalizers"]

logger = logging.getLogger(__name__)

#: Held-out slices per normal study used to refit the bank normalizers.
HELD_OUT_PER_STUDY = 24


def lesion_references(datastore: Datastore, config: LabelConfig, normals: list[str]) -> list[dict[str, str]]:
    """Known lesion studies for the guard: ``[{"image", "mask", "kind"}]`` (at most ``guard_max_studies``, sorted
    by id): non-empty ``final`` labels of studies not marked normal (kind ``reviewer label``), then reference masks
    next to studies (kind ``reference mask``)."""
    ids, label_uri = local_view(datastore)
    skip = set(normals)
    out: list[dict[str, str]] = []
    for image_id in sorted(i for i in ids if i not in skip):
        uri = label_uri(image_id, DefaultLabelTag.FINAL.value)
        if uri and os.path.isfile(uri) and not is_empty_label(uri):
            out.append({"image": image_id, "mask": uri, "kind": "reviewer label"})
    have = {r["image"] for r in out}
    ref = getattr(datastore, "reference_mask", None)
    for image_id in sorted(i for i in ids if i not in skip and i not in have):
        mask = ref(image_id) if ref is not None else ""
        if mask:
            out.append({"image": image_id, "mask": mask, "kind": "reference mask"})
    return out[: config.guard_max_studies]


@torch.no_grad()
def refit_bank_normalizers(detector, held_out: torch.Tensor, batch_size: int = 16) -> dict[str, list[float]]:
    """Fit the memory-bank normalizers (``pixel_bank``, ``image_bank``: min/max) of ``detector`` on normal model
    inputs ``[N, 3, S, S]`` that are not in its bank; returns the fitted ranges."""
    if detector.memory_bank is None or not len(held_out):
        return {}
    lo = {"pixel_bank": np.inf, "image_bank": np.inf}
    hi = {"pixel_bank": -np.inf, "image_bank": -np.inf}
    for chunk in held_out.split(batch_size):
        res = detector.predict(chunk)
        for name, v in (("pixel_bank", res.bank_maps), ("image_bank", res.bank_scores)):
            lo[name] = min(lo[name], float(v.min()))
            hi[name] = max(hi[name], float(v.max()))
    for name in lo:
        detector.normalizer.fit(name, torch.tensor([lo[name], hi[name]]))
    return {name: [round(lo[name], 6), round(hi[name], 6)] for name in lo}


def _coverage(amap: torch.Tensor, mask: np.ndarray, thresholds) -> tuple[float, float]:
    from medad.inference import grade

    values = amap[0].detach().cpu().numpy()
    labelled = grade(values, thresholds) > 0
    return float(labelled[mask].mean()), float(values[mask].max())


def guard_check(active, candidate, references: list[dict[str, str]], datastore, store: DetectorStore,
                min_kept: float) -> dict[str, Any]:
    """Score each known lesion study with the ``active`` and the ``candidate`` detector; ``refused`` when the
    candidate labels fewer than ``min_kept`` of the lesion voxels the active one labels on any study."""
    from medad.io import load_volume, volume_source

    from .infer_task import to_reference_grid

    studies, refused = [], []
    runners = (store.make_runner(active), store.make_runner(candidate))
    for ref in references:
        entry: dict[str, Any] = {"image": ref["image"], "kind": ref["kind"]}
        try:
            vol = load_volume(volume_source(datastore.get_image_uri(ref["image"])))
            mask_mt = load_volume(ref["mask"])
            mask_mt = to_reference_grid(mask_mt, tuple(vol.shape[1:]), np.asarray(vol.affine, dtype=np.float64),
                                        what=os.path.basename(ref["mask"]))
            mask = mask_mt[0].numpy() > 0
        except Exception as e:  # noqa: BLE001 - one unusable reference must not stop the loop
            entry["skipped"] = f"{type(e).__name__}: {str(e)[:200]}"
            studies.append(entry)
            continue
        if not mask.any():
            entry["skipped"] = "empty mask"
            studies.append(entry)
            continue
        before = _coverage(runners[0].run(vol).anomaly_map, mask, active.options.thresholds)
        after = _coverage(runners[1].run(vol).anomaly_map, mask, candidate.options.thresholds)
        entry.update({"lesion_voxels": int(mask.sum()), "labelled_before": round(before[0], 4),
                      "labelled_after": round(after[0], 4), "max_before": round(before[1], 4),
                      "max_after": round(after[1], 4)})
        if before[0] > 0 and after[0] < min_kept * before[0]:
            entry["collapsed"] = True
            refused.append(entry)
        studies.append(entry)
    checked = [s for s in studies if "skipped" not in s]
    report: dict[str, Any] = {"min_kept": min_kept, "checked": len(checked), "studies": studies,
                              "refused": bool(refused)}
    if refused:
        worst = min(refused, key=lambda s: s["labelled_after"] / max(s["labelled_before"], 1e-9))
        report["message"] = (
            f"site checkpoint NOT activated: on {len(refused)} of {len(checked)} known lesion studies the new memory "
            f"bank would blank the lesion (e.g. {worst['image']!r}: lesion voxels labelled "
            f"{100 * worst['labelled_before']:.0f} % -> {100 * worst['labelled_after']:.0f} %, map maximum in the "
            f"lesion {worst['max_before']:.2f} -> {worst['max_after']:.2f}; the guard needs at least "
            f"{100 * min_kept:.0f} % kept). The active model stays in use. The bank's distances do not separate "
            "these lesions from the normals marked so far (check those normal labels; with the demo model's "
            "untrained tiny backbone the bank never does).")
    elif not checked:
        report["message"] = ("no known lesion study to check the new bank on (submit a lesion label, or put "
                             "<study>_mask.nii.gz next to a study): activated unchecked")
    return report


def _held_out_index(n: int, bank: np.ndarray) -> np.ndarray:
    rest = np.setdiff1d(np.arange(n), bank)
    if not len(rest):
        return np.arange(n)
    pick = np.unique(np.round(np.linspace(0, len(rest) - 1, min(HELD_OUT_PER_STUDY, len(rest)))).astype(int))
    return rest[pick]


class NormalBankTrainTask(TrainTask):
    """Adds reviewer-confirmed normal studies to the few-shot memory bank (see the module docstring).

    Args:
        store: the app's :class:`~medad.label.store.DetectorStore`.
        config: the app options.
    """

    def __init__(self, store: DetectorStore, config: LabelConfig,
                 description: str = "Add studies labelled 'normal' by a reviewer to the few-shot memory bank") -> None:
        super().__init__(description)
        self.store = store
        self.app_config = config

    def config(self) -> dict[str, Any]:
        return {"normal_tag": self.app_config.normal_tag, "shots": self.app_config.shots,
                "guard_min_kept": self.app_config.guard_min_kept}

    def stats(self) -> dict[str, Any]:
        try:
            with open(self.app_config.report_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write_report(self, report: dict[str, Any]) -> None:
        from medad.io import write_text_atomic

        os.makedirs(os.path.dirname(self.app_config.report_path), exist_ok=True)
        write_text_atomic(self.app_config.report_path, json.dumps(report, indent=1, sort_keys=True, default=str))

    def _calibration(self, det, normal_sources: list[Any]) -> Optional[dict[str, Any]]:
        cal = getattr(det.options, "calibration", None)
        if cal is None:
            return None
        need = cal.min_studies(cal.specificity)
        if len(normal_sources) < need:
            det.options.calibration = None
            return {"refitted": False, "dropped": True,
                    "note": f"operating point dropped: {len(normal_sources)} normal studies, {need} needed for "
                            f"specificity {cal.specificity:g} (raw scores until more studies are marked normal)"}
        from medad.evaluation.calibration import calibrate

        report = calibrate(det, [lambda s=s: load_source(s) for s in normal_sources], specificity=cal.specificity,
                           grade_quantiles=tuple(cal.grade_quantiles) or None,
                           **{"top_k": self.app_config.top_k, **self.app_config.runner_options})
        return {"refitted": True, **report.summary()}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        from medad.checkpoints import save_checkpoint
        from medad.io import find_volumes

        start = time.time()
        cfg = self.app_config
        ids = normal_images(datastore, cfg)
        if not ids:
            return {"status": "nothing to do", "normal_studies": 0,
                    "detail": f"No image is marked normal (tag {cfg.normal_tag!r}). Run the mark_normal model on "
                              f"it, or POST /medad/mark_normal?image=<id>."}
        det = self.store.build(use_site=False)
        base_tokens = len(det.memory_bank) if det.memory_bank is not None else 0
        sources = [datastore.get_image_uri(i) for i in ids]
        missing = [i for i, s in zip(ids, sources) if not s or not os.path.exists(s)]
        if missing:
            logger.warning("%d normal-labelled image(s) are no longer in the datastore; skipped", len(missing))
        sources = [s for s in sources if s and os.path.exists(s)]
        support = find_volumes(cfg.support) if cfg.support else []
        bank_parts, held = [], []
        for i, src in enumerate([*sources, *support]):
            x = self.store.model_inputs(load_source(src), det)
            b = self.store.bank_index(len(x))
            if i < len(sources):  # the support studies' slices are in the configured bank already
                bank_parts.append(x[torch.as_tensor(b)])
            held.append(x[torch.as_tensor(_held_out_index(len(x), b))])
        previous = det.memory_bank
        new_bank = det.fit_memory_bank(torch.cat(bank_parts))
        det.memory_bank = merge_banks([previous, new_bank])
        ranges = refit_bank_normalizers(det, torch.cat(held))
        calibration = self._calibration(det, [*sources, *support])
        active, _ = self.store.get()
        refs = lesion_references(datastore, cfg, ids)
        guard = guard_check(active, det, refs, datastore, self.store, cfg.guard_min_kept)
        digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        report = {"ts": int(time.time()), "normal_studies": len(sources), "base_bank_tokens": base_tokens,
                  "bank_tokens": len(det.memory_bank), "held_out_slices": int(sum(len(h) for h in held)),
                  "bank_normalizers": ranges, "calibration": calibration, "guard": guard,
                  "seconds": round(time.time() - start, 2)}
        if guard["refused"]:
            report["status"] = "refused"
            self._write_report(report)
            logger.error(guard["message"])
            raise Conflict(guard["message"])
        save_checkpoint(det, cfg.site_checkpoint,
                        extra={"site_normals": len(sources), "site_normals_sha256": digest,
                               "site_base": self.store.base_id(), "bank_normalizers": ranges})
        report["status"] = "activated"
        self._write_report(report)
        logger.info("memory bank: %d -> %d tokens from %d normal studies; bank normalizers %s; guard: %s",
                    base_tokens, len(det.memory_bank), len(sources), ranges, guard.get("message") or "ok")
        return {**report, "status": "done"}
