"""MVFA adapter training. One public entry point, :func:`train` (zero-shot leave-one-dataset-out, few-shot with the
11 support augmentations, normal-only few-shot; clean or paper protocol), used by ``medad train``, the bundle and
the benchmarks.

Modules: :mod:`~medad.training.api` (``train``, the mode dispatch), :mod:`~medad.training.protocols` (the three
protocols, model selection, provenance), :mod:`~medad.training.fit` (the loop on cached features, ``TrainConfig``),
:mod:`~medad.training.features` (the frozen-prefix feature cache), :mod:`~medad.training.augment`,
:mod:`~medad.training.losses`, :mod:`~medad.training.distributed` (``torchrun`` data parallel).
"""

from .api import MODES, pick_target, train
from .fit import TrainConfig
from .protocols import PROTOCOL_LABELS, TrainResult

__all__ = ["train", "TrainConfig", "TrainResult", "MODES", "PROTOCOL_LABELS", "pick_target"]
