"""Support code for the MONAI bundle ``bundles/mri_ct_slice_anomaly_mvfa`` (wiring only: no model math here).

Bundle configs must target the *installed* ``medad`` package, never a bundle-local ``scripts`` package (that only
imports when run from the bundle root, see ``ecosystem.md`` 0.6). Everything a config needs beyond MONAI is here:

* :class:`SliceAnomalyNet` - the bundle's ``network_def``: an ``nn.Module`` around an
  :class:`~medad.model.detector.AnomalyDetector` mapping slices ``[B, 3, H, W]`` in [0, 1] to anomaly maps
  ``[B, 1, H, W]`` in [0, 1]. Its ``state_dict`` is the medad checkpoint (:mod:`medad.checkpoints`, the one format:
  adapters, options, normalizers, memory bank, text features; the backbone for ``tiny``), exactly ``models/model.pt``,
  so ``verify_net_in_out`` and ``ckpt_export`` work with it.
* :class:`LoadVolumed` - the loading transform of a data list from :func:`medad.io.find_volumes` (NIfTI files and
  DICOM series, each series on its own: never the MONAI readers that mix series of one folder).
* :class:`VolumeInferer` - a MONAI ``Inferer`` running :class:`medad.inference.VolumeRunner` on each volume; the
  anomaly map keeps the source geometry and carries the volume/slice scores in its ``meta``.
* :class:`SaveAnomalyMapd`, :class:`SaveVolumeScoresd` - the outputs through :func:`medad.inference.write_outputs`
  (NIfTI map, optional DICOM Parametric Map and SEG for DICOM sources) and the scores table with
  ``medad score``'s columns (:data:`medad.inference.RESULTS_COLUMNS`).
* :class:`AnomalyDatasets`, :class:`MVFATrainer`, :class:`MVFAEvaluator` - ``train#dataset``, ``train#trainer``
  and ``validate#evaluator`` (the model zoo's ids) with ``.run()`` over :func:`medad.training.train` /
  :func:`medad.evaluation.evaluate`.
* :func:`make_demo_volumes`, :func:`make_demo_dataset` - the demo data the bundle makes for itself (phantom volumes
  for inference, a small MVFA-layout slice dataset for training/evaluation).
"""

from .data import LoadVolumed, output_name
from .demo import make_demo_dataset, make_demo_volumes
from .inference import (SCORE_META_KEYS, SaveAnomalyMapd, SaveVolumeScoresd, VolumeInferer, prepare_volume_batch,
                        volume_result)
from .network import SliceAnomalyNet, save_model
from .training import AnomalyDatasets, MVFAEvaluator, MVFATrainer

__all__ = ["SliceAnomalyNet", "save_model", "LoadVolumed", "output_name", "VolumeInferer", "prepare_volume_batch",
           "SaveAnomalyMapd", "SaveVolumeScoresd", "SCORE_META_KEYS", "volume_result", "AnomalyDatasets", "MVFATrainer",
           "MVFAEvaluator", "make_demo_dataset", "make_demo_volumes"]
