"""MONAI Label app serving medad anomaly maps to 3D Slicer and OHIF.

Start it with ``medad label --studies <folder or DICOMweb url>`` (applies the pydicom-3 shim, binds 127.0.0.1 and
runs a copy of this app in the workspace, so nothing is written here), or with MONAI Label's own command::

    monailabel start_server --app apps/medad_label --studies <studies> --host 127.0.0.1 \
        --uvicorn_app medad.label.asgi:app --conf adapters demo

(MONAI Label itself then writes ``logs/``, ``model/`` and ``bin/`` into this folder.)

Options (``--conf key value``): see :mod:`medad.label.config` and ``docs/monailabel.md``.
"""

# medad.label.app first: it installs the pydicom-3 shim that monailabel.interfaces.app needs.
from medad.label.app import MedadAppMixin
from medad.label.config import MODEL_NAME
from monailabel.interfaces.app import MONAILabelApp

from lib.infers import AnomalyInfer
from lib.trainers import NormalBank


class MedadApp(MedadAppMixin, MONAILabelApp):
    """The app: medad's infer tasks (``anomaly``, ``mark_normal``) and reviewer-loop train task, wired from ``lib/``."""

    def init_infers(self):
        infers = super().init_infers()
        url = str(self.studies).rstrip("/") if self.is_dicomweb() else None
        infers[MODEL_NAME] = AnomalyInfer(self.detector_store, self.label_config, datastore=self.datastore,
                                          dicomweb_url=url)
        return infers

    def init_trainers(self):
        return {MODEL_NAME: NormalBank(self.detector_store, self.label_config)}
