"""The datastores of the medad MONAI Label app.

- :class:`~medad.label.datastore.local.MedadLocalDatastore`: a folder of studies (read only), the app's own files in
  the workspace, reference masks recognised, every id checked;
- :class:`~medad.label.datastore.dicomweb.MedadDICOMWebDatastore`: a PACS over DICOMweb, submitted labels written as
  DICOM SEG with highdicom (no dcmqi), every id checked;
- :mod:`~medad.label.datastore.ids`: the id, tag, path and upload checks both use.
"""

from .. import install_pydicom_shim

install_pydicom_shim()

from .dicomweb import MedadDICOMWebDatastore, label_to_dicom_seg, nifti_to_dicom_seg, segment_names  # noqa: E402
from .ids import LABEL_SUFFIXES, STUDY_SUFFIXES, check_id, check_tag, check_upload, inside  # noqa: E402
from .local import MedadLocalDatastore  # noqa: E402

__all__ = ["LABEL_SUFFIXES", "MedadDICOMWebDatastore", "MedadLocalDatastore", "STUDY_SUFFIXES", "check_id",
           "check_tag", "check_upload", "inside", "label_to_dicom_seg", "nifti_to_dicom_seg", "segment_names"]
