"""ASGI entry point: ``monailabel start_server ... --uvicorn_app medad.label.asgi:app``.

Installs the pydicom-3 shim (:func:`medad.label.install_pydicom_shim`), imports MONAI Label's FastAPI ``app`` and
makes it safe and responsive:

- handlers that turn client mistakes into 4xx answers instead of 500 (:mod:`medad.label.server.errors`);
- medad's own endpoints for inference (checked, queued off the event loop), uploads, labels and unknown task names,
  and the ``/medad/*`` endpoints (:mod:`medad.label.server.routes`);
- the upload size limit, enforced while the body is read (:mod:`medad.label.server.limits`);
- ``output=dicom_seg`` and a DICOMweb datastore's ``final`` labels converted with highdicom instead of dcmqi
  (:func:`medad.label.datastore.nifti_to_dicom_seg`).
"""

from medad.label import install_pydicom_shim

install_pydicom_shim()

from monailabel.app import app  # noqa: E402

import monailabel.datastore.dicom as _dicom_datastore  # noqa: E402
import monailabel.endpoints.infer as _infer_endpoint  # noqa: E402

from medad.label.datastore import nifti_to_dicom_seg  # noqa: E402
from medad.label.server.errors import install_exception_handlers  # noqa: E402
from medad.label.server.limits import BodySizeLimit  # noqa: E402
from medad.label.server.routes import install_routes  # noqa: E402


def _upload_limit():
    """The app's ``--conf max_upload_mb`` in bytes (512 MiB before the app is up or for another app)."""
    from monailabel.interfaces.utils.app import app_instance

    try:
        cfg = getattr(app_instance(), "label_config", None)
    except Exception:  # noqa: BLE001 - the app failed to start: keep the default
        cfg = None
    return cfg.max_upload_bytes if cfg is not None else 512 << 20


install_exception_handlers(app)
install_routes(app)
if not getattr(app.state, "medad_limits", False):
    app.add_middleware(BodySizeLimit, limit=_upload_limit)
    app.state.medad_limits = True
# POST /infer/<model>?output=dicom_seg and a DICOMweb datastore's saving of 'final' labels convert labels with dcmqi
# (downloaded from GitHub, absent offline): use the highdicom conversion instead (also for apps other than medad's).
_infer_endpoint.nifti_to_dicom_seg = nifti_to_dicom_seg
_dicom_datastore.nifti_to_dicom_seg = nifti_to_dicom_seg

__all__ = ["app"]
