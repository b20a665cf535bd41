"""train.json (few-shot and, by overrides, zero-shot), evaluate.json on top of it, multi_gpu_train.json parsing."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import CONFIGS

TRAIN = str(CONFIGS / "train.json")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    """Two small synthetic datasets (Brain_AD, Liver_AD) in MVFA layout, made by the bundle's demo-data maker."""
    import medad.bundle as mb

    root = tmp_path_factory.mktemp("demo_data")
    mb.make_demo_dataset(root, name="Brain_AD", seed=111, shape=(64, 64, 12))
    mb.make_demo_dataset(root, name="Liver_AD", seed=7, shape=(48, 48, 10))
    return root


def _workflow(config_file, **override):
    from monai.bundle import ConfigWorkflow

    base = dict(backbone="tiny", max_epochs=1, k=1, batch_size=8)
    # workflow_type "train": the zoo's train ids (train#trainer, train#trainer#max_epochs, train#dataset,
    # train#inferer) are there; every test passes its own output_dir (bundle_root "." is the working directory)
    wf = ConfigWorkflow(config_file=config_file, logging_file=False, workflow_type="train", **{**base, **override})
    wf.initialize()
    assert wf.check_properties() == []
    return wf


@pytest.fixture(scope="module")
def few_shot(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_out")
    wf = _workflow(TRAIN, dataset_dir=str(demo_root / "Brain_AD"), model_path=str(out / "model.pt"),
                   output_dir=str(out))
    wf.run()
    wf.finalize()
    return wf, out


def test_demo_data_layout(demo_root):
    from medad.datasets import read_dataset

    ds = read_dataset(demo_root / "Brain_AD")
    assert ds.object_name == "Brain" and ds.has_masks
    for split in ("valid", "test"):
        labels = [s.label for s in ds.split(split)]
        assert 0 in labels and 1 in labels
        assert all(s.mask is not None for s in ds.split(split) if s.label == 1)


def test_few_shot_one_epoch(few_shot):
    from medad.checkpoints import read_checkpoint

    wf, out = few_shot
    ckpt = read_checkpoint(out / "model.pt")
    extra = ckpt["medad"]
    assert extra["backbone"] == "tiny" and extra["object_name"] == "Brain"
    assert extra["provenance"]["mode"] == "few-shot" and extra["provenance"]["k"] == 1
    assert extra["memory_bank"]["seg"].shape[1] == 11 * (17 * 17)  # 1 normal image x 11 augmentations x 289 patches
    assert extra["normalizer"]["low"].isfinite().all()  # fitted on the non-support valid images
    hist = json.loads((out / "train_history.json").read_text())
    assert [h["epoch"] for h in hist["history"]] == [1] and hist["history"][0]["loss"] > 0
    assert wf.parser.get_parsed_content("train#trainer").result.best_epoch == 1


def test_trained_model_feeds_inference_network(few_shot):
    """The checkpoint written by train.json is what inference.json's network_def loads (memory bank included)."""
    import medad.bundle as mb

    _, out = few_shot
    net = mb.SliceAnomalyNet(adapters=str(out / "model.pt"))
    assert net.detector.backbone == "tiny" and net.detector.memory_bank is not None
    with torch.no_grad():
        y = net(torch.rand(2, 3, 240, 240))
    assert y.shape == (2, 1, 240, 240) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_evaluate_on_top_of_train(few_shot, demo_root):
    _, out = few_shot
    wf = _workflow([TRAIN, str(CONFIGS / "evaluate.json")], dataset_dir=str(demo_root / "Brain_AD"),
                   model_path=str(out / "model.pt"), output_dir=str(out))
    wf.run()
    m = json.loads((out / "metrics.json").read_text())
    assert m["dataset"] == "Brain" and m["split"] == "test" and m["normalization"] == "fitted"
    assert m["n_normal"] > 0 and m["n_abnormal"] > 0 and m["memory_bank"] is True
    # held-out test phantoms: one epoch of 1-shot training + the bank beats the untrained tiny adapters by a margin
    # (measured: image AUROC 0.86 vs 0.07, pixel AUROC 0.81 vs 0.51, AUPRO 0.53 vs 0.21)
    import medad
    from medad.datasets import read_dataset
    from medad.evaluation import evaluate

    untrained = evaluate(medad.load_detector(backbone="tiny"), read_dataset(demo_root / "Brain_AD"), "test",
                         progress=False)
    assert m["pixel_auroc"] >= 0.7 and m["pixel_auroc"] > untrained["pixel_auroc"] + 0.2, (m, untrained)
    assert m["image_auroc"] >= 0.7 and m["image_auroc"] > untrained["image_auroc"] + 0.4, (m, untrained)
    assert m["aupro"] > untrained["aupro"] + 0.2, (m, untrained)


def test_zero_shot_by_override(demo_root, tmp_path):
    """--mode zero-shot --target Brain on a folder of datasets: trains on the others (Liver), leaves Brain out."""
    from medad.checkpoints import read_checkpoint

    wf = _workflow(TRAIN, dataset_dir=str(demo_root), mode="zero-shot", target="Brain",
                   model_path=str(tmp_path / "zero.pt"), output_dir=str(tmp_path))
    wf.run()
    prov = read_checkpoint(tmp_path / "zero.pt")["medad"]["provenance"]
    assert prov["mode"] == "zero-shot" and prov["target"] == "Brain" and prov["sources"] == ["Liver"]


def test_evaluate_without_model_says_what_to_do(demo_root, tmp_path):
    wf = _workflow([TRAIN, str(CONFIGS / "evaluate.json")], dataset_dir=str(demo_root / "Brain_AD"),
                   model_path=str(tmp_path / "missing.pt"), output_dir=str(tmp_path))
    with pytest.raises(RuntimeError) as err:  # MONAI wraps errors raised in "$" expressions
        wf.run()
    assert isinstance(err.value.__cause__, FileNotFoundError) and "run configs/train.json first" in str(err.value.__cause__)


def test_bad_mode_is_rejected(demo_root, tmp_path):
    wf = _workflow(TRAIN, dataset_dir=str(demo_root / "Brain_AD"), mode="one-shot", output_dir=str(tmp_path))
    with pytest.raises(RuntimeError) as err:
        wf.run()
    assert "mode must be one of" in str(err.value.__cause__ or err.value)


def test_multi_gpu_config_merges(monkeypatch, demo_root, tmp_path):
    """multi_gpu_train.json replaces device/initialize/finalize; without torchrun it runs as one process."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    wf = _workflow([TRAIN, str(CONFIGS / "multi_gpu_train.json")], dataset_dir=str(demo_root / "Brain_AD"),
                   output_dir=str(tmp_path))
    init = wf.parser["initialize"]
    assert any("init_distributed" in e for e in init) and any("cleanup" in e for e in wf.parser["finalize"])
    assert wf.parser.get_parsed_content("device") in ("cpu", "cuda:0")
    assert wf.parser["train"]["trainer"]["_target_"] == "medad.bundle.MVFATrainer"
    wf.finalize()
