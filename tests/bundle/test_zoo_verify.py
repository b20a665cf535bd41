"""The MONAI model zoo's ``ci/verify_bundle.py`` checks that can run offline, run on the bundle as the zoo runs them.

Source of the checks: Project-MONAI/model-zoo at ``dfae206`` (``ci/verify_bundle.py``, ``ci/utils.py``,
``ci/bundle_custom_data.py``, ``.pre-commit-config.yaml``). The zoo's code is not copied; each test below names the
zoo function whose check it repeats. The metadata schema is the zoo's own (``meta_schema_20240725.json``), vendored
verbatim in ``docs/`` because CI has no network (the zoo's ``ci/prepare_schema.py`` downloads it to
``eval/schema.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from .conftest import BUNDLE, CONFIGS

SCHEMA = BUNDLE / "docs" / "meta_schema_20240725.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
#: SHA-256 of project-monai.github.io@abfc051:public/schema/meta_schema_20240725.json (a verbatim copy of the release
#: asset above, per that folder's README), the file vendored in docs/.
SCHEMA_SHA256 = "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678"


def _meta() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())


def test_vendored_schema_is_the_zoo_schema():
    """docs/meta_schema_20240725.json: byte-identical to the upstream file (its SHA-256, also in the .sha256 file
    next to it), and the metadata names that schema's URL."""
    data = SCHEMA.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256
    line = (SCHEMA.parent / (SCHEMA.name + ".sha256")).read_text().split()
    assert line == [SCHEMA_SHA256, SCHEMA.name]
    schema = json.loads(data)
    assert schema["$schema"] == "https://json-schema.org/draft/2019-09/schema"
    assert schema["required"] == ["schema", "version", "monai_version", "pytorch_version", "numpy_version",
                                  "required_packages_version", "task", "description", "authors", "copyright",
                                  "network_data_format"]
    assert _meta()["schema"] == SCHEMA_URL


def test_verify_metadata_format_like_the_zoo(tmp_path):
    """verify_bundle.verify_metadata_format: ``verify_metadata(meta_file=configs/metadata.json,
    filepath=<bundle>/eval/schema.json)`` after ci/prepare_schema.py put the schema there (here: the vendored copy,
    hash-checked by MONAI), and the schema really rejects a metadata file without a required key."""
    from monai.bundle import verify_metadata

    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "eval").mkdir()
    shutil.copy(SCHEMA, bundle / "eval" / "schema.json")
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(bundle / "eval" / "schema.json"),
                    hash_val=SCHEMA_SHA256, hash_type="sha256")
    for key in ("network_data_format", "authors", "required_packages_version"):
        meta = _meta()
        del meta[key]
        bad = tmp_path / f"no_{key}.json"
        bad.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=key):
            verify_metadata(meta_file=str(bad), filepath=str(SCHEMA), hash_val=SCHEMA_SHA256, hash_type="sha256")


def test_version_and_changelog():
    """verify_bundle.verify_version_changes: ``version`` and ``changelog`` present, the version in the changelog
    (the zoo also rejects a version already in its model_info.json: this bundle is not in the zoo)."""
    meta = _meta()
    assert meta["version"] in meta["changelog"]
    assert list(meta["changelog"])[0] == meta["version"]  # newest first, as the zoo's bundles list them


def test_declared_value_ranges_are_what_the_bundle_promises():
    """The network output and the saved map are clamped to [0, 1] (declared so); the volume/slice scores are not
    bounded and the metadata must not claim they are."""
    meta = _meta()
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["value_range"] == [0, 1]
    assert fmt["outputs"]["pred"]["value_range"] == [0, 1]
    assert fmt["post_processed_outputs"]["anomaly_map"]["value_range"] == [0, 1]
    assert "not bounded" in fmt["post_processed_outputs"]["anomaly_map"]["channel_def"]["0"]
    assert "NOT bounded" in meta["description"]


def test_no_deprecated_metadata_keys():
    """MONAI 1.6 renames ``optional_packages_version`` to ``required_packages_version`` (with a warning)."""
    meta = _meta()
    assert "optional_packages_version" not in meta and "medad" in meta["required_packages_version"]


def _zoo_find_bundle_file(root, file: str):
    """verify_bundle._find_bundle_file: ``<file>.json|yaml|yml`` in ``root`` (exact names), else None."""
    found = None
    for suffix in ("json", "yaml", "yml"):
        if f"{file}.{suffix}" in os.listdir(root):
            found = f"{file}.{suffix}"
    return found


def test_verify_bundle_directory():
    """verify_bundle.verify_bundle_directory: the necessary files (configs/metadata.json, LICENSE) and the preferred
    ones (models/model.pt, configs/inference.*); the zoo finds no large_files.{json,yaml,yml}, so neither its
    verification nor its release step (ci/update_model_info.py) downloads anything into the bundle."""
    for f in ("configs/metadata.json", "LICENSE", "models/model.pt"):
        assert (BUNDLE / f).is_file(), f
    assert _zoo_find_bundle_file(BUNDLE / "configs", "inference") == "inference.json"
    assert _zoo_find_bundle_file(BUNDLE, "large_files") is None


def test_models_model_pt_is_the_demo_asset():
    """models/model.pt is a byte copy of medad's embedded demo checkpoint (the one checkpoint format); re-copy it
    when medad/assets changes (this test fails until then)."""
    from medad.checkpoints import read_checkpoint
    from medad.factory import DEMO_ADAPTERS

    shipped = (BUNDLE / "models" / "model.pt").read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == hashlib.sha256(DEMO_ADAPTERS.read_bytes()).hexdigest()
    sums = dict(reversed(line.split()) for line in (DEMO_ADAPTERS.parent / "SHA256SUMS").read_text().splitlines()
                if line.strip())
    assert sums[DEMO_ADAPTERS.name] == hashlib.sha256(shipped).hexdigest()
    extra = read_checkpoint(BUNDLE / "models" / "model.pt")["medad"]
    assert extra["backbone"] == "tiny" and extra["visual_state_dict"]  # self-contained: the tiny backbone is inside


def test_clip_weights_are_referenced_for_monai_only(monkeypatch):
    """``python -m monai.bundle download_large_files --bundle_path .`` (which reads every ``large_files*`` file)
    fetches the CLIP weights into models/backbone/ with their SHA-256; the zoo's exact-name lookup above does not."""
    import monai.bundle.scripts as scripts

    calls = []
    monkeypatch.setattr(scripts, "download_url", lambda **kw: calls.append(kw))
    scripts.download_large_files(bundle_path=str(BUNDLE))
    (call,) = calls
    assert Path(call["filepath"]) == BUNDLE / "models" / "backbone" / "ViT-L-14-336px.pt"
    assert call["hash_type"] == "sha256" and len(call["hash_val"]) == 64 and call["url"].startswith("https://")


def test_verify_data_shape():
    """verify_bundle.verify_data_shape: ``verify_net_in_out(net_id, meta_file, config_file, bundle_root=<bundle>)``
    with the config's defaults (the shipped models/model.pt), as the zoo calls it."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE))


def test_torchscript_by_trace_not_script(tmp_path):
    """verify_bundle.verify_torchscript scripts ``network_def`` (``ckpt_export`` without ``use_trace``): that fails
    for this network, so the bundle belongs in the zoo's ``exclude_verify_torchscript_list`` (the README says so).
    ``ckpt_export --use_trace True`` of the shipped models/model.pt works and gives the network's maps."""
    from monai.bundle import ConfigParser, ckpt_export

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def").eval()
    with pytest.raises(Exception):  # noqa: B017 - any TorchScript compile error; if this passes, drop the exclusion
        torch.jit.script(net)
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "exclude_verify_torchscript_list" in readme and "--use_trace True" in readme

    ts_path = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(ts_path), ckpt_file=str(BUNDLE / "models" / "model.pt"),
                meta_file=str(CONFIGS / "metadata.json"), config_file=str(CONFIGS / "inference.json"),
                bundle_root=str(BUNDLE), device="$torch.device('cpu')", use_trace=True, input_shape=[1, 3, 240, 240])
    ts = torch.jit.load(str(ts_path))  # the zoo's check of a provided model.ts
    x = torch.rand(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net(x), atol=1e-5, rtol=1e-4)


def _bundle_files():
    """Files a zoo pull request would add: the bundle as committed (no eval/, nothing ignored by its .gitignore)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "."], cwd=BUNDLE, check=True,
                         capture_output=True).stdout.decode().split("\0")
    return [BUNDLE / f for f in out if f and (BUNDLE / f).is_file()]


def test_zoo_pre_commit_hooks():
    """The model zoo's .pre-commit-config.yaml on the bundle's files: pretty-format-json --no-sort-keys --indent=4
    (json.dumps(indent=4, ensure_ascii=True) + newline, keys kept in order), end-of-file-fixer, trailing-whitespace
    (not .pt/.ts), mixed-line-ending, check-yaml; check-added-large-files --maxkb=1024 flags only models/model.pt
    (1.3 MB, documented in the README; the zoo itself holds mednist_gan's committed 1.3 MB model.pt)."""
    import yaml

    files = _bundle_files()
    names = {str(f.relative_to(BUNDLE)) for f in files}
    assert {"configs/inference.json", "configs/train.json", "docs/README.md", "models/model.pt"} <= names
    assert not any(n.startswith("eval/") for n in names)
    too_big = sorted(str(f.relative_to(BUNDLE)) for f in files if f.stat().st_size > 1024 * 1024)
    assert too_big == ["models/model.pt"]
    for f in files:
        if f.suffix in (".pt", ".ts"):
            continue
        text = f.read_bytes().decode("utf-8")
        rel = f.relative_to(BUNDLE)
        assert "\r" not in text, f"{rel}: CR line endings"
        assert text.endswith("\n") and not text.endswith("\n\n"), f"{rel}: end of file"
        assert not [i for i, line in enumerate(text.split("\n"), 1) if line != line.rstrip()], f"{rel}: trailing ws"
        if f.suffix == ".json":
            pretty = json.dumps(json.loads(text, object_pairs_hook=dict), indent="    ", ensure_ascii=True) + "\n"
            assert text == pretty, f"{rel} is not formatted as pretty-format-json --no-sort-keys --indent=4"
        if f.suffix in (".yml", ".yaml"):
            yaml.safe_load(text)


BRATS = Path(__file__).resolve().parents[3] / "shared" / "data" / "brats2015_subset" / "mvfa_layout" / "Brain_AD"


def test_eval_metrics_are_labelled_and_match_the_readme():
    """eval_metrics name what they measure (BraTS subset, test split, tiny demo model) and the README's table and
    model hash say the same."""
    meta, readme = _meta(), (BUNDLE / "docs" / "README.md").read_text()
    prefix = "brats2015_subset_test_tiny_demo_model_"
    assert meta["eval_metrics"] and all(k.startswith(prefix) for k in meta["eval_metrics"])
    names = {"image_auroc": "image AUROC", "image_ap": "image AP", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
             "aupro": "AUPRO"}
    for key, value in meta["eval_metrics"].items():
        assert f"| {names[key[len(prefix):]]} | {value:.4f} |" in readme, key
    assert hashlib.sha256((BUNDLE / "models" / "model.pt").read_bytes()).hexdigest() in readme


@pytest.mark.slow
@pytest.mark.skipif(not BRATS.is_dir(), reason=f"BraTS subset not present at {BRATS}")
def test_eval_metrics_come_from_the_evaluate_config(tmp_path):
    """Re-run what gave eval_metrics: evaluate.json on top of train.json, the BraTS subset, models/model.pt, the
    tiny backbone (fp32, as the test suite pins it)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
                        workflow_type="train", logging_file=False, bundle_root=str(BUNDLE), output_dir=str(tmp_path),
                        dataset_dir=str(BRATS), model_path=str(BUNDLE / "models" / "model.pt"), backbone="tiny")
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert (m["split"], m["n_normal"], m["n_abnormal"], m["backbone"]) == ("test", 69, 204, "tiny")
    prefix = "brats2015_subset_test_tiny_demo_model_"
    for key, value in _meta()["eval_metrics"].items():
        assert m[key[len(prefix):]] == pytest.approx(value, abs=6e-5), key
