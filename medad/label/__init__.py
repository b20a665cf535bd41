"""MONAI Label integration: serve medad anomaly maps to 3D Slicer and OHIF.

Importing this package does not import MONAI Label. The pieces:

- :mod:`medad.label.compat`: the pydicom-3 shim MONAI Label 0.8.5 needs before it can be imported.
- :mod:`medad.label.asgi`: the ASGI app for ``monailabel start_server --uvicorn_app medad.label.asgi:app``
  (shim + ``monailabel.app.app`` + handlers that turn bad requests into 4xx answers).
- :mod:`medad.label.config`: ``--conf`` options -> :class:`~medad.label.config.LabelConfig`.
- :mod:`medad.label.infer_task`: the ``anomaly`` infer task (graded uint8 label map, scores, NIfTI map, PM + SEG).
- :mod:`medad.label.train_task`: the reviewer loop (studies labelled ``normal`` -> few-shot memory bank).
- :mod:`medad.label.app`: :class:`~medad.label.app.MedadAppMixin`, the app logic ``apps/medad_label/main.py`` wires.

Start the server with ``medad label --studies <dir-or-dicomweb-url>`` (see ``docs/monailabel.md``).
"""

from .compat import install_pydicom_shim

__all__ = ["install_pydicom_shim"]
