"""ASGI entry point: ``monailabel start_server ... --uvicorn_app medad.label.asgi:app``.

Installs the pydicom-3 shim (:func:`medad.label.install_pydicom_shim`), imports MONAI Label's FastAPI ``app``, adds handlers
so client mistakes get 4xx answers instead of 500 (see :mod:`medad.label.errors`), and makes ``output=dicom_seg``
convert labels with highdicom instead of dcmqi (:func:`medad.label.datastore.nifti_to_dicom_seg`).
"""

from medad.label import install_pydicom_shim

install_pydicom_shim()

from monailabel.app import app  # noqa: E402

import monailabel.datastore.dicom as _dicom_datastore  # noqa: E402
import monailabel.endpoints.infer as _infer_endpoint  # noqa: E402

from medad.label.datastore import nifti_to_dicom_seg  # noqa: E402
from medad.label.errors import install_exception_handlers  # noqa: E402

install_exception_handlers(app)
# POST /infer/<model>?output=dicom_seg and a DICOMweb datastore's saving of 'final' labels convert labels with dcmqi
# (downloaded from GitHub, absent offline): use the highdicom conversion instead (also for apps other than medad's).
_infer_endpoint.nifti_to_dicom_seg = nifti_to_dicom_seg
_dicom_datastore.nifti_to_dicom_seg = nifti_to_dicom_seg

__all__ = ["app"]
