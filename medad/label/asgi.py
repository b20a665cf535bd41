"""ASGI entry point: ``monailabel start_server ... --uvicorn_app medad.label.asgi:app``.

Installs the pydicom-3 shim (see :mod:`medad.label.compat`), imports MONAI Label's FastAPI ``app`` and adds handlers
so client mistakes get 4xx answers instead of 500 (see :mod:`medad.label.errors`).
"""

from medad.label.compat import install_pydicom_shim

install_pydicom_shim()

from monailabel.app import app  # noqa: E402

from medad.label.errors import install_exception_handlers  # noqa: E402

install_exception_handlers(app)

__all__ = ["app"]
