"""The embedded demo model visibly finds the lesions of phantoms it never saw (issue 16), asserted live.

Fresh phantoms (seeds never used to train, select or calibrate the demo model, nor anywhere else in the repository)
are written the way a site would hand them over (CT as a DICOM series, MR as NIfTI) and scored through
``medad score`` with its defaults (:func:`medad.batch.score`, the embedded demo model). Per phantom: the voxel AUROC
of the anomaly maps *inside the head*, pooled over the phantoms of each modality, is >= 0.95, and each of the three
most anomalous slices of every phantom in ``results.csv`` holds a lesion.
"""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import medad
from medad.batch import score
from medad.synthetic.phantoms import head_mask, make_ct_phantom, make_mr_phantom, write_dicom_series

#: Fresh seeds: see ``scripts/train_demo_model.py`` for the ones used to train, select, check and calibrate.
HELD_OUT_SEEDS = (7301, 7302, 7303)


def _score_phantom(root, modality: str, seed: int):
    """``(lesion mask, head mask, anomaly map [X,Y,Z], top slices)`` of one fresh phantom scored by ``medad score``."""
    image, mask, affine = (make_ct_phantom if modality == "CT" else make_mr_phantom)(seed)
    if modality == "CT":
        write_dicom_series(image, affine, root / "in", seed=seed)
    else:
        (root / "in").mkdir()
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "in" / "flair.nii.gz")
    summary = score([root / "in"], root / "out", workers=0, progress=False)
    assert (summary.n_scored, summary.n_failed) == (1, 0)
    with open(root / "out" / "results.csv", newline="") as fh:
        (row,) = [r for r in csv.DictReader(fh) if r["status"] == "ok"]
    amap = np.asarray(nib.load(root / "out" / row["output_dir"] / "anomaly_map.nii.gz").dataobj)
    assert amap.shape == image.shape  # the map is in the source geometry, voxel for voxel
    return mask > 0, head_mask(image, modality), amap, [int(k) for k in row["top_slices"].split()]


@pytest.fixture(scope="module", params=["CT", "MR"])
def scored(request, tmp_path_factory):
    """``(modality, [(lesion, head, map, top slices) per held-out phantom])``."""
    modality = request.param
    return modality, [_score_phantom(tmp_path_factory.mktemp(f"{modality}{seed}"), modality, seed)
                      for seed in HELD_OUT_SEEDS]


def test_voxel_auroc_inside_the_head(scored):
    modality, cases = scored
    labels = np.concatenate([lesion[head] for lesion, head, _, _ in cases])
    values = np.concatenate([amap[head] for _, head, amap, _ in cases])
    auroc = roc_auc_score(labels, values)
    assert auroc >= 0.95, f"{modality}: voxel AUROC inside the head {auroc:.4f} ({len(cases)} phantoms)"


def test_each_top3_slice_holds_a_lesion(scored):
    modality, cases = scored
    for seed, (lesion, _, _, top) in zip(HELD_OUT_SEEDS, cases):
        lesion_slices = set(np.nonzero(lesion.any((0, 1)))[0].tolist())
        assert len(top) >= 3 and set(top[:3]) <= lesion_slices, (modality, seed, top[:3], sorted(lesion_slices))
def test_demo_model_is_labelled_and_self_contained():
    demo = medad.load_detector(adapters="demo")
    assert demo.backbone == "tiny"
    assert "demo weights trained on synthetic phantoms, not for clinical use" in str(demo.metadata).lower()
    assert demo.metadata["backbone_sha256"] != "tiny-random-init-20240617"  # a pre-trained backbone, stored in the asset
