"""Calibrated scores and the operating point (issue 11): fitted on normal phantoms, the false-positive rate on fresh
normal phantoms stays within the stated bound, scores stay in [0, 1], the calibration travels with the adapters."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import medad
from medad.checkpoints import save_checkpoint
from medad.evaluation.calibration import calibrate, fit_grade_thresholds
from medad.inference import VolumeRunner, provenance
from medad.model.options import Calibration, DetectorOptions
from medad.synthetic import make_mr_phantom


def _clopper_pearson_lower(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided lower confidence limit of a binomial proportion (exact, by bisection)."""
    if k == 0:
        return 0.0

    def tail(p: float) -> float:  # P(X >= k | p)
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) < 1 - confidence else (lo, mid)
    return lo


def test_conformal_guarantee_on_exchangeable_scores():
    """The math alone: over many draws of n=19 calibration scores + one new score from the same distribution, the
    flag rate is (n+1-m)/(n+1) = 1/20 (continuous scores), never above 1 - specificity."""
    rng = np.random.default_rng(0)
    flags, cond = [], []
    for _ in range(4000):
        cal = Calibration.fit(rng.gamma(2.0, size=19), rng.normal(size=50), specificity=0.95)
        flags.append(cal.flagged(rng.gamma(2.0)))
        cond.append(cal.fpr_bound)
    assert cal.n_studies == 19 and cal.rank == 19 and cal.fpr_bound == pytest.approx(0.05)
    assert 0.04 <= np.mean(flags) <= 0.06
    assert Calibration.min_studies(0.95) == 19 and Calibration.min_studies(0.9) == 9
    with pytest.raises(ValueError, match="need at least 19"):
        Calibration.fit(rng.normal(size=18), [0.0], specificity=0.95)


def test_calibrated_scores_are_percentiles_in_0_1():
    cal = Calibration.fit(np.arange(1, 10, dtype=float), np.linspace(0, 1, 11), specificity=0.9)
    assert cal.volume_score(5.0) == pytest.approx(5 / 10)  # 5 of 9 normal studies <= 5, over n + 1
    s = cal.volume_score(np.array([-1e9, -3.0, 0.5, 1.0, 4.5, 9.0, 12.0, 1e9]))
    assert np.all((s >= 0) & (s <= 1)) and np.all(np.diff(s) >= 0)
    assert s[0] < 0.01 and s[-1] > 0.99
    # the operating point: flagged iff raw > threshold iff calibrated score > operating point
    assert cal.rank == 9 and cal.threshold == 9.0 and cal.fpr_bound == pytest.approx(0.1)
    for raw in (8.9, 9.0, 9.01, 15.0):
        assert cal.flagged(raw) == (raw > 9.0) == (cal.volume_score(raw) > cal.operating_point)
    assert 0.1 < cal.fpr_bound_95 < 0.4
    assert Calibration.from_dict(cal.to_dict()) == cal
    opts = DetectorOptions(calibration=cal.to_dict())
    assert DetectorOptions.from_dict(opts.to_dict()) == opts and opts.calibration == cal


def test_grade_thresholds_from_normal_voxel_quantiles():
    hist = np.histogram(np.random.default_rng(1).beta(2, 8, 200_000), bins=100_000, range=(0, 1))[0]
    t = fit_grade_thresholds(hist, (0.99, 0.999, 0.9999))
    assert 0 < t[0] < t[1] < t[2] <= 1
    values = np.random.default_rng(2).beta(2, 8, 200_000)
    assert np.mean(values >= t[0]) == pytest.approx(0.01, abs=0.003)
    saturated = np.zeros(100_000, dtype=np.int64)
    saturated[-1] = 10  # every normal voxel at 1.0: still increasing thresholds inside (0, 1]
    t = fit_grade_thresholds(saturated, (0.99, 0.999, 0.9999))
    assert t[0] < t[1] < t[2] <= 1.0


def _normal(seed: int, shape=(32, 32, 6)) -> MetaTensor:
    img, _, aff = make_mr_phantom(seed, shape=shape, n_lesions=0, spacing=(7.0, 7.0, 12.0))
    return MetaTensor(torch.from_numpy(img)[None], affine=torch.from_numpy(aff), meta={"modality": "MR"})


class TextureDetector(torch.nn.Module):
    """A fast stand-in with a detector's interface (options, metadata, state): map = local deviation from the
    slice's smoothed intensity, image score = its 99th percentile. Continuous, content-dependent scores."""

    image_size = 48

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(()))
        self.options = DetectorOptions()
        self.metadata = {"backbone_sha256": "stand-in"}

    @torch.no_grad()
    def predict(self, images):
        x = images.mean(1, keepdim=True)
        smooth = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
        maps = ((x - smooth).abs()[:, 0] * 4 * self.gain).clamp(0, 1)
        return type("R", (), {"anomaly_maps": maps, "image_scores": maps.flatten(1).quantile(0.99, dim=1)})()


@pytest.fixture(scope="module")
def calibrated():
    det = TextureDetector()
    report = calibrate(det, [lambda s=s: _normal(s) for s in range(100, 139)], specificity=0.95)
    return det, report


def test_operating_point_holds_on_fresh_normal_phantoms(calibrated):
    det, report = calibrated
    cal = det.options.calibration
    assert cal is report.calibration and cal.n_studies == 39 and cal.fpr_bound == pytest.approx(2 / 40)
    runner = VolumeRunner(det)
    assert runner.calibration_status()[0] is cal
    results = [runner.run(_normal(s)) for s in range(5000, 5200)]
    for r in results:
        assert r.calibrated and isinstance(r.flagged, bool)
        assert 0.0 <= r.volume_score <= 1.0 and np.all((r.slice_scores >= 0) & (r.slice_scores <= 1))
        assert r.flagged == (r.raw_volume_score > cal.threshold)
    k = sum(r.flagged for r in results)
    # the stated bounds: marginal fpr_bound, and fpr_bound_95 for 95 % of calibration sets. The fresh sample's
    # 95 % lower confidence limit of its false-positive rate must not exceed the latter.
    assert _clopper_pearson_lower(k, len(results)) <= cal.fpr_bound_95, (k, cal.summary())
    # the grading thresholds now mean "above 99 / 99.9 / 99.99 % of normal voxels"
    assert report.thresholds == det.options.thresholds and cal.grade_quantiles == (0.99, 0.999, 0.9999)


def test_calibration_travels_with_the_adapters_and_only_applies_to_its_settings(tiny_detector, tmp_path):
    det = copy.deepcopy(tiny_detector)  # a real detector, 4 small normal studies at specificity 0.8
    calibrate(det, [_normal(s, (24, 24, 3)) for s in range(4)], specificity=0.8, grade_quantiles=None, batch_size=8)
    assert det.options.thresholds == tiny_detector.options.thresholds and det.options.calibration.n_studies == 4
    path = save_checkpoint(det, tmp_path / "cal.pt", include_backbone=True)
    back = medad.load_detector(backbone="tiny", adapters=path)
    assert back.options.calibration == det.options.calibration
    runner = VolumeRunner(back, batch_size=8)
    prov = provenance(back, runner)
    assert prov["operating_point"] == det.options.calibration.summary()
    vol = _normal(7000, (24, 24, 3))
    assert runner.run(vol).volume_score == pytest.approx(VolumeRunner(det, batch_size=8).run(vol).volume_score)
    other = VolumeRunner(back, batch_size=8, top_k=2)  # other settings: not applied, said so, raw scores
    cal, note = other.calibration_status()
    assert cal is None and "top_k=5" in note
    res = other.run(vol)
    assert res.flagged is None and not res.calibrated and res.volume_score == res.raw_volume_score
    assert provenance(back, other)["operating_point"] is None
    retrained = copy.deepcopy(back)  # other adapters with the old calibration in their options: not applied
    with torch.no_grad():
        next(retrained.model.adapters.parameters()).add_(1e-2)
    cal, note = VolumeRunner(retrained).calibration_status()
    assert cal is None and "adapters_sha256" in note


def test_each_modality_gets_its_own_operating_point():
    rng = np.random.default_rng(3)
    ct, mr = rng.normal(5.0, 1.0, 25), rng.normal(1.0, 0.2, 20)  # CT scores far above MR ones
    cal = Calibration.fit(np.concatenate([ct, mr]), [rng.normal(size=4) for _ in range(45)], specificity=0.95,
                          modalities=["CT"] * 25 + ["mr"] * 20)
    assert sorted(cal.by_modality) == ["CT", "MR"] and cal.for_modality("PT") is cal
    assert cal.for_modality("MR").threshold == mr.max() and cal.for_modality("ct").n_studies == 25
    assert cal.for_modality("MR").flagged(2.0) and not cal.flagged(2.0)  # pooled: dominated by CT
    assert Calibration.from_dict(cal.to_dict()) == cal
    assert set(cal.summary()["by_modality"]) == {"CT", "MR"}
    few = Calibration.fit(np.concatenate([ct, mr[:10]]), [rng.normal(size=4) for _ in range(35)],
                          modalities=["CT"] * 25 + ["MR"] * 10)
    assert list(few.by_modality) == ["CT"]  # 10 MR studies cannot give a 95 % operating point: pooled for MR


def test_the_runner_applies_the_volume_modalitys_calibration():
    det = TextureDetector()
    runner = VolumeRunner(det, intensity="percentile")  # the same raw scores whatever the modality
    from medad.inference.provenance import adapters_digest, runner_settings

    settings = {**runner_settings(runner), "adapters_sha256": adapters_digest(det), "backbone_sha256": "stand-in"}
    vol = _normal(42)
    raw = runner.run(vol).raw_volume_score
    rng = np.random.default_rng(4)
    low, high = raw - 1 - rng.random(19), raw + 1 + rng.random(19)  # MR normals score below, CT normals above
    det.options.calibration = Calibration.fit(np.concatenate([low, high]), [[0.1]] * 38, settings=settings,
                                              modalities=["MR"] * 19 + ["CT"] * 19)
    runner = VolumeRunner(det, intensity="percentile")
    mr = runner.run(vol)
    vol.meta["modality"] = "CT"
    ct = runner.run(vol)
    assert mr.raw_volume_score == ct.raw_volume_score == raw
    assert mr.flagged and mr.volume_score > 0.95 and not ct.flagged and ct.volume_score < 0.05


def test_medad_calibrate_then_medad_score_flags(tmp_path, capsys):
    """End to end: ``medad calibrate`` on normal DICOM series writes a checkpoint whose operating point ``medad score``
    applies: ``flagged`` and the operating point in results.csv, run.json holds the operating point."""
    import csv
    import json

    from medad.cli import main
    from medad.synthetic import write_dicom_series

    for s in range(5):
        img, _, aff = make_mr_phantom(200 + s, (24, 24, 3), n_lesions=0, spacing=(9.0, 9.0, 12.0))
        write_dicom_series(img, aff, tmp_path / "normal" / f"s{s}", seed=f"cal-{s}", modality="MR")
    img, _, aff = make_mr_phantom(300, (24, 24, 3), n_lesions=2, spacing=(9.0, 9.0, 12.0))
    write_dicom_series(img, aff, tmp_path / "new" / "a", seed="new-a", modality="MR")
    ckpt = tmp_path / "calibrated.pt"
    assert main(["calibrate", str(tmp_path / "normal"), "--out", str(ckpt), "--adapters", "none", "--backbone",
                 "tiny", "--specificity", "0.8", "--no-progress"]) == 0
    assert "P(flagged) <= 0.1667" in capsys.readouterr().out  # n = 5, m = ceil(6 * 0.8) = 5: 1/6
    out = tmp_path / "out"
    assert main(["score", str(tmp_path / "new"), "--out", str(out), "--adapters", str(ckpt), "--workers", "0",
                 "--no-progress"]) == 0
    with open(out / "results.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["flagged"] in ("true", "false") and 0.0 <= float(row["volume_score"]) <= 1.0
    assert row["operating_point"] != "" and row["adapters_sha256"] and row["volume_score_raw"]
    run = json.loads((out / "run.json").read_text())
    assert run["operating_point"]["n_studies"] == 5 and run["operating_point"]["specificity"] == 0.8
