"""Support code for the MONAI bundle ``bundles/mri_ct_slice_anomaly_mvfa`` (wiring only: no model math here).

Bundle configs must target the *installed* ``medad`` package, never a bundle-local ``scripts`` package (that only
imports when run from the bundle root, see ``ecosystem.md`` 0.6). Everything a config needs beyond MONAI is here:

* :class:`SliceAnomalyNet` - the bundle's ``network_def``: an ``nn.Module`` around an
  :class:`~medad.model.detector.AnomalyDetector` mapping slices ``[B, 3, H, W]`` in [0, 1] to anomaly maps
  ``[B, 1, H, W]`` in [0, 1]. Its ``state_dict`` is complete (backbone, adapters, text features, normalizers, and the
  memory bank / scoring options as extra state), so ``models/model.pt``, ``verify_net_in_out`` and ``ckpt_export``
  work with it.
* :func:`find_volumes` + :class:`LoadVolumed` - a data list of volumes (NIfTI files and DICOM series, each series on
  its own: never the MONAI readers that mix series of one folder) and its loading transform (``medad.io``).
* :class:`VolumeInferer` - a MONAI ``Inferer`` running :class:`medad.engine.volume.VolumeRunner` on each volume; the
  anomaly map keeps the source geometry and carries the volume/slice scores in its ``meta``.
* :class:`SaveAnomalyMapd`, :class:`SaveVolumeScoresd` - the NIfTI map (plus optional DICOM Parametric Map and SEG
  for DICOM sources) and the per-volume scores CSV.
* :class:`MVFATrainer`, :class:`MVFAEvaluator` - ``trainer``/``evaluator`` with ``.run()`` over
  :mod:`medad.engine.train` / :mod:`medad.engine.evaluate`; :func:`make_demo_dataset` - a small synthetic
  MVFA-layout dataset to try them.
"""

from .data import LoadVolumed, find_volumes, output_name
from .inference import (CSV_COLUMNS, SCORE_META_KEYS, SaveAnomalyMapd, SaveVolumeScoresd, VolumeInferer,
                        prepare_volume_batch)
from .network import SliceAnomalyNet, is_adapter_checkpoint, save_model
from .training import TRAIN_MODES, MVFAEvaluator, MVFATrainer, make_demo_dataset

__all__ = ["SliceAnomalyNet", "is_adapter_checkpoint", "save_model", "find_volumes", "LoadVolumed", "output_name",
           "VolumeInferer", "prepare_volume_batch", "SaveAnomalyMapd", "SaveVolumeScoresd", "SCORE_META_KEYS", "CSV_COLUMNS", "MVFATrainer",
           "MVFAEvaluator", "make_demo_dataset", "TRAIN_MODES"]
