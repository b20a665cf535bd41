"""App logic of the medad MONAI Label app; ``apps/medad_label/main.py`` mixes it into ``MONAILabelApp``.

MONAI Label finds the app class in ``main.py`` by looking for a class whose *direct* base is named
``MONAILabelApp``, so the app is written as ``class MedadApp(MedadAppMixin, MONAILabelApp)``.

What the mixin adds to MONAI Label 0.8.5:

- the ``anomaly`` infer task and the reviewer-loop train task, built from ``--conf`` options
  (:class:`~medad.label.config.LabelConfig`), sharing one :class:`~medad.label.store.DetectorStore`;
- request checks: unknown model or image ids are answered with 404 (MONAI Label would fail with a 500);
- offline start with a DICOMweb datastore: MONAI Label downloads the dcmqi tools from GitHub at start-up to convert
  ``final`` labels to DICOM SEG; medad writes SEGs with highdicom instead (its own outputs, and submitted labels via
  :class:`~medad.label.datastore.MedadDICOMWebDatastore`), so the download is skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .compat import install_pydicom_shim

install_pydicom_shim()  # before anything imports monailabel.interfaces.app (pydicom_seg)

from .. import __version__  # noqa: E402
from .config import MODEL_NAME, LabelConfig  # noqa: E402
from .errors import NotFound  # noqa: E402
from .infer_task import AnomalyInferTask  # noqa: E402
from .store import DetectorStore  # noqa: E402
from .train_task import NormalBankTrainTask  # noqa: E402

__all__ = ["MedadAppMixin"]

logger = logging.getLogger(__name__)


class MedadAppMixin:
    """Mixin for a ``MONAILabelApp`` subclass serving medad anomaly maps.

    Use as ``class MedadApp(MedadAppMixin, MONAILabelApp)`` with MONAI Label's ``(app_dir, studies, conf)``
    constructor arguments. The detector is loaded at start-up, so a bad ``--conf`` (missing weights, wrong
    adapters) stops the server with a message instead of failing the first request.
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str], **kwargs: Any) -> None:
        self.label_config = LabelConfig.from_conf(app_dir, conf)
        self.detector_store = DetectorStore(self.label_config)
        self.detector_store.get()
        kwargs.setdefault("name", "medad anomaly detection")
        kwargs.setdefault("description", "MVFA/CLIP anomaly maps for review (research use, not for diagnosis)")
        kwargs.setdefault("version", __version__)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, **kwargs)  # type: ignore[call-arg]

    # ------------------------------------------------------------------ MONAI Label hooks
    def is_dicomweb(self) -> bool:
        return str(self.studies).startswith(("http://", "https://"))  # type: ignore[attr-defined]

    def init_infers(self) -> dict[str, Any]:
        url = str(self.studies).rstrip("/") if self.is_dicomweb() else None  # type: ignore[attr-defined]
        return {MODEL_NAME: AnomalyInferTask(self.detector_store, self.label_config,
                                             datastore=self.datastore, dicomweb_url=url)}  # type: ignore[attr-defined]

    def init_trainers(self) -> dict[str, Any]:
        return {MODEL_NAME: NormalBankTrainTask(self.detector_store, self.label_config)}

    def init_datastore(self):
        """MONAI Label's datastore; a DICOMweb one is replaced by :class:`MedadDICOMWebDatastore` (same client and
        cache) so submitted labels become DICOM SEG through highdicom, without dcmqi."""
        from monailabel.datastore.dicom import DICOMWebDatastore

        from .datastore import MedadDICOMWebDatastore

        store = super().init_datastore()  # type: ignore[misc]
        return MedadDICOMWebDatastore.like(store) if type(store) is DICOMWebDatastore else store

    def _download_dcmqi_tools(self) -> None:
        """No download: SEGs are written with highdicom (MONAI Label would fetch dcmqi from GitHub here)."""
        logger.debug("dcmqi download skipped: medad writes DICOM SEG with highdicom")

    def infer(self, request: dict[str, Any], datastore=None) -> dict[str, Any]:
        """Check the model and image id, remember the id (to save the continuous map under it), then infer."""
        model = request.get("model")
        if model not in self._infers:  # type: ignore[attr-defined]
            raise NotFound(f"No model {model!r}; this server has {sorted(self._infers)} (see /info).")  # type: ignore
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            store = datastore if datastore else self.datastore()  # type: ignore[attr-defined]
            if image not in store.list_images():
                raise NotFound(f"Image {image!r} is not in the datastore. List the ids with "
                               "GET /datastore/?output=all (DICOMweb: the SeriesInstanceUIDs QIDO returns).")
            request = {**request, "image_id": image}
        return super().infer(request, datastore)  # type: ignore[misc]
