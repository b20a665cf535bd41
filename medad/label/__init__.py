"""MONAI Label integration: serve medad anomaly maps to 3D Slicer and OHIF.

Importing this package does not import MONAI Label. The pieces:

- :func:`install_pydicom_shim` (here): the pydicom-3 shim MONAI Label 0.8.5 needs before it can be imported.
  MONAI Label 0.8.5 imports ``pydicom_seg`` (via ``monailabel.datastore.utils.convert``), and pydicom-seg 0.4.1
  imports ``pydicom._storage_sopclass_uids``, a module pydicom 3 removed (MONAILabel issue #1841, pydicom-seg issue
  #60). highdicom needs pydicom 3, so pinning pydicom<3 is not an option; instead the removed module is aliased to the
  one name pydicom-seg uses. Call it before the first ``import monailabel.*`` that reaches ``monailabel.app`` or
  ``monailabel.interfaces.app``.
- :mod:`medad.label.asgi`: the ASGI app for ``monailabel start_server --uvicorn_app medad.label.asgi:app``
  (shim + ``monailabel.app.app`` + handlers that turn bad requests into 4xx answers).
- :mod:`medad.label.config`: ``--conf`` options -> :class:`~medad.label.config.LabelConfig`.
- :mod:`medad.label.infer_task`: the ``anomaly`` infer task (graded uint8 label map, scores, NIfTI map, PM + SEG,
  all written by :func:`medad.inference.write_outputs`).
- :mod:`medad.label.train_task`: the reviewer loop (studies labelled ``normal`` -> few-shot memory bank).
- :mod:`medad.label.app`: :class:`~medad.label.app.MedadAppMixin`, the app logic ``apps/medad_label/main.py`` wires.

Start the server with ``medad label --studies <dir-or-dicomweb-url>`` (see ``docs/monailabel.md``).
"""

from __future__ import annotations

import sys
import types

__all__ = ["install_pydicom_shim"]

_SHIM = "pydicom._storage_sopclass_uids"


def install_pydicom_shim() -> bool:
    """Register ``pydicom._storage_sopclass_uids`` if pydicom lacks it.

    Returns:
        True if the shim was installed now, False if the module already existed (pydicom 2, or shim installed).
    """
    if _SHIM in sys.modules:
        return False
    try:  # pydicom 2 still ships the module: nothing to do
        __import__(_SHIM)
        return False
    except ImportError:
        pass
    import pydicom.uid

    shim = types.ModuleType(_SHIM)
    shim.__doc__ = "medad shim: pydicom 3 removed this module; pydicom-seg 0.4.1 still imports it."
    shim.SegmentationStorage = pydicom.uid.SegmentationStorage
    sys.modules[_SHIM] = shim
    return True
