"""The HTTP side of the medad MONAI Label app (installed on MONAI Label's FastAPI app by :mod:`medad.label.asgi`).

- :mod:`~medad.label.server.errors`: client mistakes and their 4xx status;
- :mod:`~medad.label.server.queue`: the bounded inference queue (worker threads, off the event loop), with positions
  and progress;
- :mod:`~medad.label.server.limits`: the upload size limit, enforced while the body is read;
- :mod:`~medad.label.server.routes`: the endpoints medad answers itself (inference, uploads, labels, unknown
  strategies/trainers/scoring methods) and its own ``/medad/*`` endpoints.
"""

from .. import install_pydicom_shim

install_pydicom_shim()
