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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import install_pydicom_shim

install_pydicom_shim()

from monailabel.datastore.dicom import DICOMWebDatastore  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from monailabel.interfaces.datastore import DefaultLabelTag  # noqa: E402

from ..server.errors import Forbidden  # noqa: E402
from .ids import CheckedLabelInfo, check_id, check_tag  # noqa: E402

__all__ = ["MedadDICOMWebDatastore", "label_to_dicom_seg", "nifti_to_dicom_seg", "segment_names"]

logger = logging.getLogger(__name__)


def segment_names(label_info: Any, values: Sequence[int]) -> list[str]:
    """Names of the label ``values`` (sorted, > 0) from MONAI Label's ``label_info``.

    ``label_info`` is a list of ``{"name": ..., "idx": ...}`` (3D Slicer, OHIF) or of ``{"name": ...}`` in the order
    of the label values (MONAI Label's ``output=dicom_seg``); values without a name get ``segment_<value>``.
    """
    items = [i for i in (label_info or []) if isinstance(i, dict) and "name" in i]
    by_idx = {int(i["idx"]): str(i["name"]) for i in items if "idx" in i}
    if not by_idx and items:
        by_idx = {v: str(i["name"]) for v, i in zip(values, items)}
    return [by_idx.get(v, f"segment_{v}") for v in values]


def label_to_dicom_seg(series_dir: str | os.PathLike, label_file: str | os.PathLike, label_info: Any,
                       out_path: str | os.PathLike, series_description: str = "Reviewed label (MONAI Label)",
                       series_number: int = 903) -> Optional[Path]:
    """Write a label map file (on the grid of the series in ``series_dir``) as a BINARY DICOM SEG with highdicom.

    Every call gets new UIDs (a resubmitted label is a new series). Returns None for an all-empty label.
    """
    import medad.io
    from monai.data import MetaTensor
    from pydicom.uid import generate_uid

    label = medad.io.load_volume(label_file)
    values = np.rint(label.numpy()).astype(np.int64)
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"{label_file}: label values must be 0..255, found {values.min()}..{values.max()}")
    present = [int(v) for v in np.unique(values) if v > 0]
    if not present:
        return None
    # SEG segments are numbered 1..n: renumber the present values in order (names follow them)
    lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
    lut[present] = np.arange(1, len(present) + 1)
    graded = MetaTensor(lut[values].astype(np.uint8), affine=label.affine)
    sources = sorted(str(p) for p in Path(series_dir).iterdir() if p.is_file())
    return medad.io.write_segmentation(graded, sources, out_path, labels=segment_names(label_info, present),
                                       series_description=series_description, series_number=series_number,
                                       series_uid=generate_uid(), sop_instance_uid=generate_uid())


def nifti_to_dicom_seg(series_dir, label, label_info, file_ext="*", use_itk=True) -> str:
    """Drop-in for ``monailabel.datastore.utils.convert.nifti_to_dicom_seg`` without dcmqi (``output=dicom_seg``)."""
    fd, out = tempfile.mkstemp(suffix=".dcm", prefix="medad_seg_")
    os.close(fd)
    if label_to_dicom_seg(series_dir, label, label_info, out, series_description="Anomaly segmentation (MONAI Label)",
                          series_number=904) is None:
        os.unlink(out)
        raise ValueError("the label is empty: there is no segment to write as DICOM SEG")
    return out


class MedadDICOMWebDatastore(CheckedLabelInfo, DICOMWebDatastore):
    """:class:`monailabel.datastore.dicom.DICOMWebDatastore` with highdicom SEG export of submitted labels."""

    @classmethod
    def like(cls, other: DICOMWebDatastore) -> "MedadDICOMWebDatastore":
        """The same datastore (client with its credentials, search filter, cache, options) as this class."""
        cache = os.path.dirname(other._datastore_path)  # <cache_path>/<md5(url)>
        observer = getattr(other, "_observer", None)  # the replaced instance's file watcher would run on forever
        if observer is not None:
            observer.stop()
            observer.join(5)
        return cls(client=other._client, search_filter=other._search_filter, cache_path=cache,
                   fetch_by_frame=other._fetch_by_frame, convert_to_nifti=other._convert_to_nifti)

    def roots(self) -> list[str]:
        """Folders a request may make the server read: the DICOMweb cache of this PACS."""
        return [os.path.dirname(self._datastore_path)]

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise Forbidden("this server's studies are those of the PACS: store new studies there (STOW-RS, e.g. "
                        "medad.io.stow or the PACS's own upload), not through PUT /datastore/image.")

    def remove_image(self, image_id: str) -> None:
        raise Forbidden("this server's studies are those of the PACS: delete them there, not through the server.")

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_id(label_id)
        check_tag(label_tag)
        super().remove_label(label_id, label_tag)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        check_id(label_id)
        check_tag(label_tag)
        return super().get_label_uri(label_id, label_tag, image_id)

    def reference_mask(self, image_id: str) -> str:
        """No reference masks in a PACS (reviewer labels are the known lesions)."""
        return ""

    def get_image_uri(self, image_id: str) -> str:
        """The cached image; on the first fetch MONAI Label 0.8.5 returns (and leaves behind) the temporary NIfTI it
        converted the series to, away from the cached DICOM files. Return the cached copy instead and delete the
        temporary file, so the infer task finds the source series next to the image."""
        check_id(image_id)
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
        check_id(image_id)
        check_tag(label_tag)
        if label_tag != DefaultLabelTag.FINAL:
            return super().save_label(image_id, label_filename, label_tag, label_info)  # no dcmqi involved
        import medad.io
        import pydicom

        image_uri = self.get_image_uri(image_id)  # downloads the series into the cache if needed
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # raw mask from OHIF: onto the image grid
            from monailabel.datastore.utils.convert import binary_to_image

            converted = binary_to_image(image_uri, label_filename)
            try:
                return self.save_label(image_id, converted, label_tag, label_info)
            finally:
                os.unlink(converted)
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        info = dict(label_info or {})
        with tempfile.TemporaryDirectory(prefix="medad_seg_") as tmp:
            seg = label_to_dicom_seg(image_dir, label_filename, info.get("label_info"), Path(tmp) / "label_seg.dcm")
            if seg is None:
                logger.info("empty label for %s: kept in the local cache, no SEG sent to the PACS", image_id)
            else:
                medad.io.stow(self._client.base_url, [seg], client=self._client)
                ds = pydicom.dcmread(seg, stop_before_pixels=True)
                image_info = self.get_image_info(image_id)
                info.update({"SeriesInstanceUID": str(ds.SeriesInstanceUID), "Modality": image_info.get("Modality"),
                             "StudyInstanceUID": image_info.get("StudyInstanceUID")})
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)
