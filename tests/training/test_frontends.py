"""``medad train``, the bundle's train.json and benchmarks/reproduce_paper_table.py all train through the one
:func:`medad.training.train` (the mode dispatch and the starting-adapters rule live there, nowhere else)."""

import sys
from pathlib import Path

import pytest

import medad
from medad import training
from medad.datasets import discover_datasets
from medad.training import TrainResult

sys.path.insert(0, str(Path(__file__).parent))
from _synthetic import write_layout  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TRAIN_JSON = REPO / "bundles" / "mri_ct_slice_anomaly_mvfa" / "configs" / "train.json"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontends")
    write_layout(root, "Brain", 1, n=(2, 2, 1, 1))
    write_layout(root, "Liver", 2, n=(2, 2, 1, 1))
    return root


@pytest.fixture
def calls(monkeypatch):
    """Replace ``medad.training.train`` by a recorder returning an untrained tiny detector (and fake metrics)."""
    det = medad.load_detector(backbone="tiny")
    seen = []

    def fake_train(datasets, mode="few-shot", **kw):
        seen.append({"mode": mode, "datasets": sorted(d.name for d in datasets), **kw})
        target = kw.get("target") or datasets[0].name
        metrics = ({"dataset": target, "split": "test", "n_normal": 1, "n_abnormal": 1, "image_auroc": 0.5,
                    "protocol": training.PROTOCOL_LABELS[kw.get("protocol", "clean")]}
                   if kw.get("evaluate") else None)
        return TrainResult(det, [], 1, {"mode": mode}, checkpoint=kw.get("out"), metrics=metrics)

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def test_cli_dispatches_to_train(data, tmp_path, calls, capsys):
    from medad.cli import main

    rc = main(["train", "--data", str(data), "--backbone", "tiny", "--mode", "normal-only", "--target", "Brain",
               "--k", "3", "--adapters", str(tmp_path / "zero.pt"), "--out", str(tmp_path / "n.pt"), "--no-progress",
               "--protocol", "paper", "--evaluate"])
    assert rc == 0 and len(calls) == 1
    c = calls[0]
    assert c["mode"] == "normal-only" and c["datasets"] == ["Brain", "Liver"] and c["target"] == "Brain"
    assert c["k"] == 3 and c["adapters"] == str(tmp_path / "zero.pt") and c["protocol"] == "paper"
    assert c["out"] == str(tmp_path / "n.pt") and c["evaluate"] is True and c["backbone"] == "tiny"
    assert '"image_auroc": 0.5' in capsys.readouterr().out


def test_bundle_dispatches_to_train(data, tmp_path, calls):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(TRAIN_JSON), logging_file=False, workflow_type=None, backbone="tiny",
                        dataset_dir=str(data), mode="zero-shot", target="Brain", k=2, max_epochs=3,
                        model_path=str(tmp_path / "zero.pt"), output_dir=str(tmp_path))
    wf.initialize()
    wf.run()
    assert len(calls) == 1
    c = calls[0]
    assert c["mode"] == "zero-shot" and c["datasets"] == ["Brain", "Liver"] and c["target"] == "Brain"
    assert c["adapters"] is None and c["k"] == 2 and c["config"].epochs == 3
    assert Path(c["out"]) == tmp_path / "zero.pt" and Path(c["history_path"]) == tmp_path / "train_history.json"


def test_benchmark_dispatches_to_train(data, calls, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import reproduce_paper_table

    monkeypatch.setattr(sys, "argv", ["reproduce_paper_table.py", "--data", str(data), "--backbone", "tiny",
                                      "--k", "2", "--epochs", "1", "--no-write", "--device", "cpu"])
    reproduce_paper_table.main()
    got = [(c["target"], c["mode"], c["k"], c["evaluate"], c["protocol"]) for c in calls]
    assert got == [(t, m, 2, True, "clean") for t in ("Brain", "Liver") for m in ("zero-shot", "few-shot",
                                                                                   "normal-only")]
    assert all(c["datasets"] == ["Brain", "Liver"] and c.get("adapters") is None for c in calls)
    assert "| Brain | 2-shot |" in capsys.readouterr().out


def test_cli_mode_choices_are_the_train_modes():
    from medad.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    choices = next(a for a in sub._actions if a.dest == "mode").choices
    assert sorted(choices) == sorted(training.MODES)


@pytest.mark.parametrize("mode", ["few-shot", "zero-shot"])
def test_starting_adapters_only_for_normal_only(data, tmp_path, mode):
    """The one rule: --adapters is for normal-only (bank on given adapters); the training modes start fresh."""
    with pytest.raises(ValueError, match="normal-only"):
        training.train(discover_datasets(data), mode, target="Brain", backbone="tiny",
                       adapters=tmp_path / "zero.pt")
