"""MONAI Label app serving medad anomaly maps to 3D Slicer and OHIF.

Start it with ``medad label --studies <folder or DICOMweb url>`` (applies the pydicom-3 shim and binds 127.0.0.1),
or with MONAI Label's own command::

    monailabel start_server --app apps/medad_label --studies <studies> --host 127.0.0.1 \
        --uvicorn_app medad.label.asgi:app --conf adapters demo

Options (``--conf key value``): see :mod:`medad.label.config` and ``docs/monailabel.md``.
"""

# medad.label.app first: it installs the pydicom-3 shim that monailabel.interfaces.app needs.
from medad.label.app import MedadAppMixin
from medad.label.config import MODEL_NAME
from monailabel.interfaces.app import MONAILabelApp

from lib.infers import AnomalyInfer
from lib.trainers import NormalBank


class MedadApp(MedadAppMixin, MONAILabelApp):
    """The app: medad's infer task (``anomaly``) and reviewer-loop train task, wired from ``lib/``."""

    def init_infers(self):
        url = str(self.studies).rstrip("/") if self.is_dicomweb() else None
        return {MODEL_NAME: AnomalyInfer(self.detector_store, self.label_config, datastore=self.datastore,
                                         dicomweb_url=url)}

    def init_trainers(self):
        return {MODEL_NAME: NormalBank(self.detector_store, self.label_config)}
