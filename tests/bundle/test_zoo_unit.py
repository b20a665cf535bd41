"""The bundle's test in the form of the MONAI model zoo's ``ci/unit_tests/test_<bundle>.py`` (model-zoo ``dfae206``):
``unittest`` cases run in the zoo's order (train, eval, infer), each a ``ConfigWorkflow`` with
``check_properties`` + ``initialize``/``run``/``finalize`` (the zoo's ``ci/unit_tests/utils.check_workflow``), with
the overrides the zoo passes (``bundle_root``, ``train#trainer#max_epochs``, ``dataset_dir``) plus the tiny backbone.

The zoo runs these from its repository root with ``bundle_root: models/<bundle>``; here the bundle is copied to a
temporary ``models/`` folder first, so nothing is written into the repository. The data comes from the bundle itself
(its demo-data step), which is what the zoo's ``setUp`` would otherwise fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import pytest
from monai.bundle import ConfigParser, ConfigWorkflow

from .conftest import BUNDLE

BUNDLE_NAME = BUNDLE.name

TEST_CASE_1 = {  # train, evaluate
    "train#trainer#max_epochs": 1,
    "backbone": "tiny",
    "k": 2,
    "batch_size": 8,
    "demo_shape": [64, 64, 16],
}

TEST_CASE_2 = {  # inference
    "slice_batch_size": 16,
}


def check_workflow(workflow: ConfigWorkflow, check_properties: bool = False):
    """As the zoo's ``ci/unit_tests/utils.check_workflow``."""
    workflow.initialize()
    if check_properties is True:
        check_result = workflow.check_properties()
        if check_result is not None and len(check_result) > 0:
            raise ValueError(f"check properties for workflow failed: {check_result}")
    workflow.run()
    workflow.finalize()


def export_overrided_config(config_file, override_dict, output_path):
    """As the zoo's ``ci/unit_tests/utils.export_overrided_config``."""
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(pairs=override_dict)
    ConfigParser.export_config_file(parser.config, output_path, indent=4)


def test_order(test_name1, test_name2):
    def get_order(name):
        if "train" in name:
            return 1
        if "eval" in name:
            return 2
        if "infer" in name:
            return 3
        return 4

    return get_order(test_name1) - get_order(test_name2)


test_order.__test__ = False  # the zoo's sort key for unittest, not a pytest test


class TestMriCtSliceAnomalyMvfa(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.models_dir = tempfile.mkdtemp()
        shutil.copytree(BUNDLE, os.path.join(cls.models_dir, BUNDLE_NAME),
                        ignore=shutil.ignore_patterns("eval", "__pycache__"))
        cls.bundle_root = os.path.join(cls.models_dir, BUNDLE_NAME)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.models_dir)

    def _files(self, name):
        return os.path.join(self.bundle_root, name)

    def test_train_eval_config(self):
        override = {"bundle_root": self.bundle_root, **TEST_CASE_1}
        train_file = self._files("configs/train.json")
        eval_file = self._files("configs/evaluate.json")

        trainer = ConfigWorkflow(
            workflow_type="train",
            config_file=train_file,
            logging_file=self._files("configs/logging.conf"),
            meta_file=self._files("configs/metadata.json"),
            **override,
        )
        check_workflow(trainer, check_properties=True)
        self.assertTrue(os.path.isfile(self._files("eval/model.pt")))
        result = trainer.parser.get_parsed_content("train#trainer").result
        self.assertEqual([h["epoch"] for h in result.history], [1])  # train#trainer#max_epochs reached the trainer

        validator = ConfigWorkflow(
            # override train.json, thus set the workflow to "train" rather than "eval" (as the zoo does)
            workflow_type="train",
            config_file=[train_file, eval_file],
            logging_file=self._files("configs/logging.conf"),
            meta_file=self._files("configs/metadata.json"),
            **override,
        )
        check_workflow(validator, check_properties=True)
        metrics = validator.parser.get_parsed_content("validate#evaluator").metrics
        self.assertEqual(metrics["split"], "test")
        self.assertEqual(metrics["model"], os.path.join(self.bundle_root, "eval", "model.pt"))

    def test_infer_config(self):
        override = {"bundle_root": self.bundle_root, **TEST_CASE_2}
        inferrer = ConfigWorkflow(
            workflow_type="infer",
            config_file=self._files("configs/inference.json"),
            logging_file=self._files("configs/logging.conf"),
            meta_file=self._files("configs/metadata.json"),
            **override,
        )
        check_workflow(inferrer, check_properties=True)
        with open(self._files("eval/scores.csv")) as fh:
            self.assertEqual(len(fh.read().strip().splitlines()), 3)  # header + the two demo volumes

    @pytest.mark.slow
    def test_train_mgpu_config(self):
        """The zoo's ``test_<bundle>_dist.py``: train.json + multi_gpu_train.json exported with the overrides, checked
        (``check_properties``), then ``torchrun --nproc_per_node=2 -m monai.bundle run`` (gloo on CPU here; the zoo
        runs it on its GPUs)."""
        override = {"bundle_root": self.bundle_root, "output_dir": self._files("eval/mgpu"), **TEST_CASE_1}
        output_path = self._files("configs/train_override.json")
        export_overrided_config([self._files("configs/train.json"), self._files("configs/multi_gpu_train.json")],
                                override, output_path)
        engine = ConfigWorkflow(workflow_type="train", config_file=output_path, logging_file=False,
                                meta_file=self._files("configs/metadata.json"))
        engine.initialize()
        self.assertEqual(engine.check_properties(), [])
        cmd = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nnodes=1",
               "--nproc_per_node=2", "-m", "monai.bundle", "run", "--config_file", output_path,
               "--meta_file", self._files("configs/metadata.json"), "--logging_file",
               self._files("configs/logging.conf")]
        env = {**os.environ, "PYTHONPATH": self.bundle_root, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
        subprocess.check_call(cmd, env=env, timeout=900)
        with open(self._files("eval/mgpu/train_history.json")) as fh:
            self.assertEqual([h["epoch"] for h in json.load(fh)["history"]], [1])
        self.assertTrue(os.path.isfile(self._files("eval/mgpu/model.pt")))


if __name__ == "__main__":
    loader = unittest.TestLoader()
    loader.sortTestMethodsUsing = test_order
    unittest.main(testLoader=loader)
