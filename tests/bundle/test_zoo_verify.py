"""The MONAI model zoo's ``ci/verify_bundle.py`` checks that can run offline, run on the bundle the way the zoo runs them.

Source of the checks: Project-MONAI/model-zoo at ``dfae206`` (``ci/verify_bundle.py``, ``ci/utils.py``,
``ci/bundle_custom_data.py``, ``.pre-commit-config.yaml``). The zoo's code is not copied; each test below names the
zoo function whose check it repeats. The metadata schema is the zoo's own (``meta_schema_20240725.json``), vendored
verbatim in ``docs/`` because CI has no network (the zoo's ``ci/prepare_schema.py`` downloads it to
``eval/schema.json``).
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

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
