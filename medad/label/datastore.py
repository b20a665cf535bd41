"""DICOMweb datastore whose submitted labels become DICOM SEG through highdicom instead of dcmqi.

MONAI Label 0.8.5 converts a submitted (``final``) label to DICOM SEG with dcmqi's ``itkimage2segimage``, which it
downloads from GitHub at start-up; offline that fails, and medad skips the download (see :mod:`medad.label.app`).
:class:`MedadDICOMWebDatastore` writes the SEG with :func:`medad.io.write_segmentation` (highdicom, referencing the
cached source series) and stores it with :func:`medad.io.stow`, then keeps the label in the local cache like MONAI
Label does. An all-empty label (a reviewer found nothing) is kept locally but not sent to the PACS: a SEG without
segments carries no information, and that label is what ``--conf empty_final_is_normal`` looks for.
"""

from __future__ import annotations

import logging
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from .compat import install_pydicom_shim

install_pydicom_shim()

from monailabel.datastore.dicom import DICOMWebDatastore  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.interfaces.datastore import DefaultLabelTag  # noqa: E402

__all__ = ["MedadDICOMWebDatastore", "segment_names"]

logger = logging.getLogger(__name__)


def segment_names(label_info: Any, n: int) -> list[str]:
    """Names of label values ``1..n`` from MONAI Label's ``label_info`` (``[{"name", "idx"}, ...]``, as 3D Slicer
    and OHIF send it), ``segment_<k>`` where it has none."""
    names = {}
    for item in label_info or []:
        if isinstance(item, dict) and "name" in item and "idx" in item:
            names[int(item["idx"])] = str(item["name"])
    return [names.get(k, f"segment_{k}") for k in range(1, n + 1)]


class MedadDICOMWebDatastore(DICOMWebDatastore):
    """:class:`monailabel.datastore.dicom.DICOMWebDatastore` with highdicom SEG export of submitted labels."""

    @classmethod
    def like(cls, other: DICOMWebDatastore) -> "MedadDICOMWebDatastore":
        """The same datastore (client with its credentials, search filter, cache, options) as this class."""
        cache = os.path.dirname(other._datastore_path)  # <cache_path>/<md5(url)>
        return cls(client=other._client, search_filter=other._search_filter, cache_path=cache,
                   fetch_by_frame=other._fetch_by_frame, convert_to_nifti=other._convert_to_nifti)

    def get_image_uri(self, image_id: str) -> str:
        """The cached image; on the first fetch MONAI Label 0.8.5 returns (and leaves behind) the temporary NIfTI it
        converted the series to, away from the cached DICOM files. Return the cached copy instead and delete the
        temporary file, so the infer task finds the source series next to the image."""
        uri = super().get_image_uri(image_id)
        if not self._convert_to_nifti:
            return uri
        cached = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        if uri != cached and os.path.isfile(cached):
            if os.path.isfile(uri) and os.path.dirname(os.path.realpath(uri)) == os.path.realpath(
                    tempfile.gettempdir()):
                os.unlink(uri)
            return cached
        return uri

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL or "".join(pathlib.Path(label_filename).suffixes) == ".bin":
            return super().save_label(image_id, label_filename, label_tag, label_info)  # no dcmqi involved
        import medad.io

        self.get_image_uri(image_id)  # downloads the series into the cache if needed
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        label = medad.io.load_volume(label_filename)
        values = np.rint(label.numpy()).astype(np.int64)
        if values.min() < 0 or values.max() > 255:
            raise ValueError(f"label values must be 0..255, found {values.min()}..{values.max()}")
        info = dict(label_info or {})
        if values.max() > 0:
            from monai.data import MetaTensor

            graded = MetaTensor(values.astype(np.uint8), affine=label.affine)
            sources = sorted(str(p) for p in pathlib.Path(image_dir).iterdir() if p.is_file())
            names = segment_names(info.get("label_info"), int(values.max()))
            from pydicom.uid import generate_uid

            with tempfile.TemporaryDirectory(prefix="medad_seg_") as tmp:  # new UIDs: every submission is kept
                seg = medad.io.write_segmentation(graded, sources, os.path.join(tmp, "label_seg.dcm"), labels=names,
                                                  series_description="Reviewed label (MONAI Label)",
                                                  series_number=903, series_uid=generate_uid(),
                                                  sop_instance_uid=generate_uid())
                medad.io.stow(self._client.base_url, [seg], client=self._client)
                import pydicom

                ds = pydicom.dcmread(seg, stop_before_pixels=True)
            image_info = self.get_image_info(image_id)
            info.update({"SeriesInstanceUID": str(ds.SeriesInstanceUID), "Modality": image_info.get("Modality"),
                         "StudyInstanceUID": image_info.get("StudyInstanceUID")})
        else:
            logger.info("empty label for %s: kept in the local cache, no SEG sent to the PACS", image_id)
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)
