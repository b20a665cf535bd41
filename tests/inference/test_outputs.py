"""write_outputs, grading, the UID policy and provenance: one writer for every front-end."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medad.inference import (GRADE_LABELS, OutputOptions, VolumeRunner, grade, grading_summary, output_uids,
                             provenance, results_row, series_fields, write_outputs)
from medad.inference.uids import content_digest, source_key, uid_salt
from medad.io import load_volume, metatensor_from_hd_volume
from medad.synthetic import make_ct_phantom, write_dicom_series

THRESHOLDS = (0.3, 0.6, 0.85)


class RampDetector:
    """Map = mean intensity (at the input size), score = mean of the map: fast and deterministic."""

    image_size = 64

    def predict(self, images):
        maps = images.mean(1)
        return SimpleNamespace(image_scores=maps.flatten(1).mean(1), anomaly_maps=maps)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    hu, _, affine = make_ct_phantom(5, (40, 36, 8), n_lesions=1, spacing=(5.0, 5.0, 8.0), noise_hu=3.0)
    folder = tmp_path_factory.mktemp("ct")
    write_dicom_series(hu, affine, folder, seed="inference-outputs")
    vol = load_volume(folder)
    res = VolumeRunner(RampDetector(), batch_size=4, intensity="minmax", top_k=3).run(vol)
    return vol, res


def test_grade_is_the_one_rule():
    v = np.array([0.0, 0.29, 0.3, 0.59, 0.6, 0.849, 0.85, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(grade(v, THRESHOLDS), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(grade(torch.from_numpy(v), THRESHOLDS), grade(v, THRESHOLDS))
    assert grade(v, THRESHOLDS).dtype == np.uint8
    for bad in [(), (0.5, 0.5, 0.9), (0.9, 0.5)]:
        with pytest.raises(ValueError, match="strictly increasing"):
            grade(v, bad)
    # exactly np.digitize (float64 comparison), also at float32 neighbours of the thresholds, for NaN and +-inf
    rng = np.random.default_rng(0)
    a = rng.random((30, 20, 10)).astype(np.float32)
    for t in THRESHOLDS:
        f = np.float32(t)
        a.flat[rng.integers(0, a.size, 20)] = [f, np.nextafter(f, np.float32(1)), np.nextafter(f, np.float32(0)),
                                               *rng.random(17)]
    a.flat[:3] = [np.nan, np.inf, -np.inf]
    for arr in (a, a.astype(np.float64), a.astype(np.float16)):
        np.testing.assert_array_equal(grade(arr, THRESHOLDS), np.digitize(arr, np.asarray(THRESHOLDS)))
    summary = grading_summary(grade(v, THRESHOLDS), THRESHOLDS)
    assert summary == {"thresholds": list(THRESHOLDS), "labels": list(GRADE_LABELS),
                       "voxels": {"background": 2, "anomaly_low": 2, "anomaly_mid": 2, "anomaly_high": 2}}


def test_uids_follow_the_content_identity():
    prov = {"model_sha256": "a" * 64, "axis": "axial"}
    c = content_digest(np.zeros((4, 4, 3), np.float32))
    base = output_uids("1.2.3", uid_salt(prov, THRESHOLDS), c)
    assert base == output_uids("1.2.3", uid_salt(dict(prov), list(THRESHOLDS)), c)  # a rerun: the same UIDs
    assert len({*base.to_dict().values()}) == 6
    others = [output_uids("1.2.3#2", uid_salt(prov, THRESHOLDS), c),  # another volume of the same series
              output_uids("1.2.3", uid_salt({**prov, "model_sha256": "b" * 64}, THRESHOLDS), c),  # another model
              output_uids("1.2.3", uid_salt({**prov, "axis": "coronal"}, THRESHOLDS), c),  # other settings
              output_uids("1.2.3", uid_salt(prov, (0.4, 0.6, 0.85)), c),  # other grading
              output_uids("1.2.3", uid_salt(prov, THRESHOLDS), content_digest(np.zeros((4, 4, 2), np.float32))),
              output_uids("1.2.3", uid_salt(prov, THRESHOLDS), content_digest(np.full((4, 4, 3), 1e-7, np.float32)))]
    for o in others:
        assert not set(o.to_dict().values()) & set(base.to_dict().values())
    assert source_key({"series_key": "1.2.3#2", "series_uid": "1.2.3"}) == "1.2.3#2"
    assert source_key({"series_uid": "1.2.3"}) == "1.2.3"
    with pytest.raises(ValueError, match="series_key"):
        source_key({})


def test_provenance_identifies_model_and_settings(tiny_detector):
    runner = VolumeRunner(tiny_detector, top_k=3)
    p = provenance(tiny_detector, runner)
    assert p["model_sha256"] == tiny_detector.fingerprint() and len(p["model_sha256"]) == 64
    assert p["thresholds"] == list(tiny_detector.options.thresholds) and p["backbone"] == "tiny"
    assert (p["axis"], p["top_k"], p["view"], p["intensity"]) == ("axial", 3, "radiological", "auto")
    assert provenance(tiny_detector, runner) == p
    other = copy.deepcopy(tiny_detector)
    with torch.no_grad():
        next(other.model.adapters.parameters()).add_(1e-3)
    assert provenance(other, runner)["model_sha256"] != p["model_sha256"]
    assert provenance(tiny_detector, VolumeRunner(tiny_detector, view="ras"))["view"] == "ras"
    assert "axis" not in provenance(tiny_detector)


def test_write_outputs_dicom_series(tmp_path, ct_series):
    vol, res = ct_series
    prov = {"model_sha256": "m1", "thresholds": list(THRESHOLDS)}
    rec = write_outputs(res, vol, tmp_path / "a", OutputOptions(overlays=2, dicom=True, provenance=prov))
    assert rec.files["nifti"] == "anomaly_map.nii.gz" and rec.files["pm"] == "pm.dcm" and rec.files["seg"] == "seg.dcm"
    assert rec.files["pngs"] == [f"top{r}_slice{k:04d}.png" for r, k in enumerate(res.top_slices[:2], start=1)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        ["anomaly_map.nii.gz", "anomaly_map.json", "pm.dcm", "seg.dcm", *rec.files["pngs"]])
    # the NIfTI holds the map in the source geometry
    img = nib.load(tmp_path / "a" / "anomaly_map.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), res.anomaly_map[0].numpy())
    np.testing.assert_allclose(img.affine, res.anomaly_map.affine.numpy(), atol=1e-5)
    # the grading uses the provenance thresholds (the detector's), and the SEG holds exactly that grading
    expected = grade(res.anomaly_map[0], THRESHOLDS)
    assert rec.grading == grading_summary(expected, THRESHOLDS)
    assert sum(rec.grading["voxels"].values()) == expected.size and rec.grading["voxels"]["anomaly_high"] > 0
    seg = hd.seg.segread(tmp_path / "a" / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(GRADE_LABELS)
    back = metatensor_from_hd_volume(seg.get_volume(combine_segments=True))
    np.testing.assert_array_equal(back[0].numpy(), expected)
    # UIDs: the policy's, recorded; the scores are the result's
    want = output_uids(vol.meta["series_key"], uid_salt(prov, THRESHOLDS, GRADE_LABELS),
                       content_digest(res.anomaly_map)).to_dict()
    assert rec.uids == {k: v for k, v in want.items() if not k.startswith("pm_int")}
    pm = pydicom.dcmread(tmp_path / "a" / "pm.dcm", stop_before_pixels=True)
    assert (pm.SeriesInstanceUID, pm.SOPInstanceUID) == (want["pm_series"], want["pm_instance"])
    assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == (want["seg_series"], want["seg_instance"])
    assert rec.scores["volume_score"] == res.volume_score and rec.scores["top_slices"] == res.top_slices
    assert rec.provenance == prov
    # a rerun gives the same objects; other thresholds a new SEG and PM identity and another grading
    again = write_outputs(res, vol, tmp_path / "b", OutputOptions(overlays=2, dicom=True, provenance=prov))
    assert again.uids == rec.uids and again.grading == rec.grading
    other = write_outputs(res, vol, tmp_path / "c", OutputOptions(overlays=0, dicom=True, provenance=prov,
                                                                  thresholds=(0.2, 0.5, 0.7)))
    assert not set(other.uids.values()) & set(rec.uids.values())
    assert other.grading["thresholds"] == [0.2, 0.5, 0.7] and other.grading != rec.grading
    assert other.files["pngs"] == [] and not list((tmp_path / "c").glob("*.png"))


def test_write_outputs_names_and_non_dicom(tmp_path, ct_series):
    vol, res = ct_series
    nifti = vol.clone()
    nifti.meta = {k: v for k, v in vol.meta.items() if k != "source_files"}
    rec = write_outputs(res, nifti, tmp_path, OutputOptions(overlays=1, dicom=True,
                                                            names={"nifti": "case_anomaly.nii.gz",
                                                                   "png": "case_{rank}.png"}))
    assert rec.files == {"nifti": "case_anomaly.nii.gz", "sidecar": "case_anomaly.json", "pngs": ["case_1.png"],
                         "dicom": "not a DICOM series: no PM/SEG written"}
    assert rec.uids == {} and rec.grading["thresholds"] == [0.5, 0.7, 0.9]  # no provenance: the default thresholds
    with pytest.raises(ValueError, match="3D"):
        write_outputs(VolumeRunner(RampDetector(), intensity="minmax").run_2d(torch.rand(1, 32, 32)), vol, tmp_path)


def test_results_row_schema(ct_series):
    vol, res = ct_series
    from medad.inference import result_scores

    fields = series_fields(vol)
    assert fields["key"] == vol.meta["series_key"] and fields["kind"] == "dicom" and fields["n_files"] == 8
    row = results_row(fields, "ok", scores=result_scores(res), output_dir="x")
    assert row["series_key"] == vol.meta["series_key"] and row["volume_score"] == f"{res.volume_score:.6f}"
    assert row["slices"] == res.n_slices and row["top_slices"] == " ".join(map(str, res.top_slices))
    failed = results_row({**fields, "kind": "nifti"}, "failed", scores=result_scores(res), error="a\nb",
                         anonymous_key="VOL_0000_abc")
    assert failed["series_key"] == "VOL_0000_abc" and failed["volume_score"] == "" and failed["error"] == "a b"
