"""The local datastore of the medad app: studies read from the user's folder, everything the app writes kept elsewhere.

MONAI Label's :class:`~monailabel.datastore.local.LocalDatastore` keeps its bookkeeping (``datastore_v2.json``,
``.lock``), the labels (``labels/<tag>/``) and uploaded images *inside* the studies folder, lists every ``*.nii.gz``
there as a study (``lesion_mask.nii.gz`` included) and joins request ids into paths unchecked.
:class:`MedadLocalDatastore` keeps its model (same JSON format, same REST answers) but:

- **the studies folder is only read**: studies are its top-level ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` files; files
  matching :data:`medad.io.DEFAULT_EXCLUDE` (``*mask*``, ``*label*``) and hidden files are not studies. Deleting a
  study of that folder through the API is refused (403): remove the file yourself;
- **the app's own files live in the workspace** (``<workspace>/datastore``: ``datastore_v2.json``, ``.lock``,
  ``labels/<tag>/``, ``uploads/``), see :func:`medad.label.config.default_workspace`; uploaded studies go to
  ``uploads/`` and are listed next to the folder's studies;
- **reference masks are recognised**: a mask file next to a study (``<study>_mask.nii.gz``, ``<study>-label.nrrd``,
  or any mask file in a folder holding a single study, as ``sample_data/*/lesion_mask.nii.gz``) is recorded in the
  study's info as ``reference_mask``; the reviewer loop's guard uses it as a known lesion;
- **every id and tag is checked** (:mod:`medad.label.datastore.ids`): a request naming a path gets 400, never a file
  outside the datastore.

Image ids are the file names without suffix, reduced to ``[A-Za-z0-9._-]`` (:func:`medad.io.discovery.safe_name`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import time
from typing import Any, Optional

from .. import install_pydicom_shim

install_pydicom_shim()

from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore  # noqa: E402
from monailabel.interfaces.exception import ImageNotFoundException  # noqa: E402

from ..server.errors import Conflict, Forbidden  # noqa: E402
from .ids import LABEL_SUFFIXES, STUDY_SUFFIXES, CheckedLabelInfo, check_id, check_tag, inside, upload_suffix  # noqa: E402

__all__ = ["MedadLocalDatastore"]

logger = logging.getLogger(__name__)

_STUDIES, _UPLOADS = "studies", "uploads"


def _excluded(name: str) -> bool:
    from medad.io import DEFAULT_EXCLUDE

    return name.startswith(".") or any(fnmatch.fnmatch(name.lower(), p) for p in DEFAULT_EXCLUDE)


def _volume_files(folder: str) -> tuple[list[str], list[str]]:
    """``(studies, masks)``: top-level volume file names of ``folder`` (sorted), masks = the excluded ones."""
    studies, masks = [], []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return [], []
    for name in names:
        if name.startswith(".") or upload_suffix(name, STUDY_SUFFIXES) is None:
            continue
        if not os.path.isfile(os.path.join(folder, name)):
            continue
        (masks if _excluded(name) else studies).append(name)
    return studies, masks


def _stem(name: str) -> str:
    suffix = upload_suffix(name, LABEL_SUFFIXES) or ""
    return name[: len(name) - len(suffix)] if suffix else name


class MedadLocalDatastore(CheckedLabelInfo, LocalDatastore):
    """A local datastore over the studies folder ``studies`` with its files in ``workspace`` (see the module doc).

    Args:
        studies: the user's folder of studies (read only).
        workspace: the app's folder; the datastore lives in ``<workspace>/datastore``.
    """

    def __init__(self, studies: str, workspace: str) -> None:
        from medad.io.discovery import safe_name

        self._safe_name = safe_name
        self._studies = os.path.realpath(studies)
        if not os.path.isdir(self._studies):
            raise FileNotFoundError(f"the studies folder {studies} does not exist")
        root = os.path.join(os.path.realpath(workspace), "datastore")
        if inside(root, [self._studies]):
            raise ValueError(f"the workspace {workspace} is inside the studies folder {studies}: choose another "
                             "(--conf workspace DIR); medad keeps its own files out of the studies folder")
        self._studies_mtime: Optional[float] = None
        super().__init__(root, images_dir=_UPLOADS, labels_dir="labels",
                         extensions=tuple(f"*{s}" for s in LABEL_SUFFIXES), auto_reload=False)

    # ------------------------------------------------------------------ where files are
    @property
    def studies_path(self) -> str:
        return self._studies

    def roots(self) -> list[str]:
        """Folders a request may make the server read: the studies folder and the datastore."""
        return [self._studies, self._datastore_path]

    def _obj_path(self, obj: ImageLabelModel) -> str:
        folder = self._studies if obj.image.info.get("source") == _STUDIES else self._datastore.image_path()
        return os.path.realpath(os.path.join(folder, obj.image.info.get("name", "")))

    def _obj(self, image_id: str) -> Optional[ImageLabelModel]:
        check_id(image_id)
        self._refresh_if_changed()
        return self._datastore.objects.get(image_id)

    def get_image_uri(self, image_id: str) -> str:
        obj = self._obj(image_id)
        if obj is None:
            return ""
        path = self._obj_path(obj)
        return path if inside(path, self.roots()) else ""

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        obj = self._obj(image_id)
        if obj is None:
            return {}
        info = dict(obj.image.info)
        info["path"] = self._obj_path(obj)
        return info

    def reference_mask(self, image_id: str) -> str:
        """Path of the reference (lesion) mask next to a study, "" if none."""
        obj = self._obj(image_id)
        name = obj.image.info.get("reference_mask") if obj is not None else None
        if not name or obj.image.info.get("source") != _STUDIES:
            return ""
        path = os.path.realpath(os.path.join(self._studies, name))
        return path if os.path.isfile(path) and inside(path, [self._studies]) else ""

    def datalist(self, full_path=True) -> list[dict[str, Any]]:
        tag = "final"
        out = []
        for k, v in self._datastore.filter_by_tag(tag).items():
            out.append({"image": self._obj_path(v),
                        "label": os.path.realpath(os.path.join(self._datastore.label_path(tag),
                                                               self._filename(k, v.labels[tag].ext)))})
        return out

    # ------------------------------------------------------------------ keeping the model in step with the folders
    def _refresh_if_changed(self) -> None:
        try:
            mtime = os.stat(self._studies).st_mtime
        except OSError:
            return
        if mtime != self._studies_mtime:
            self._studies_mtime = mtime
            self._reconcile_datastore()

    def list_images(self) -> list[str]:
        self._refresh_if_changed()
        return super().list_images()

    def status(self) -> dict[str, Any]:
        self._refresh_if_changed()
        return super().status()

    def json(self):
        self._refresh_if_changed()
        return super().json()

    def _add_non_existing_images(self) -> int:
        invalidate = 0
        self._init_from_datastore_file()
        objects = self._datastore.objects
        studies, masks = _volume_files(self._studies)
        uploads, _ = _volume_files(self._datastore.image_path())
        for source, names in ((_STUDIES, studies), (_UPLOADS, uploads)):
            for name in names:
                image_id = self._safe_name(_stem(name))
                if source == _UPLOADS:
                    image_id = _stem(name)  # written by add_image under a checked id
                obj = objects.get(image_id)
                if obj is not None:
                    if obj.image.info.get("name") != name or obj.image.info.get("source", _UPLOADS) != source:
                        logger.warning("two studies map to the id %r: %s is not listed", image_id, name)
                    continue
                info = {"ts": int(time.time()), "name": name, "source": source}
                objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=upload_suffix(name, STUDY_SUFFIXES)))
                invalidate += 1
        # reference masks next to the studies of the folder
        for image_id, obj in objects.items():
            if obj.image.info.get("source") != _STUDIES:
                continue
            mask = self._pair_mask(obj.image.info["name"], studies, masks)
            if obj.image.info.get("reference_mask") != mask:
                if mask:
                    obj.image.info["reference_mask"] = mask
                else:
                    obj.image.info.pop("reference_mask", None)
                invalidate += 1
        return invalidate

    @staticmethod
    def _pair_mask(study: str, studies: list[str], masks: list[str]) -> Optional[str]:
        stem = _stem(study)
        named = [m for m in masks if _stem(m).startswith(stem) and _stem(m)[len(stem):len(stem) + 1] in ("_", "-", ".")]
        if named:
            return named[0]
        return masks[0] if len(studies) == 1 and masks else None

    def _remove_non_existing(self) -> int:
        invalidate = 0
        self._init_from_datastore_file()
        kept: dict[str, ImageLabelModel] = {}
        for image_id, obj in self._datastore.objects.items():
            if "source" not in obj.image.info or not os.path.isfile(self._obj_path(obj)):
                invalidate += 1
                continue
            labels = {}
            for tag, label in obj.labels.items():
                if os.path.exists(os.path.join(self._datastore.label_path(tag), self._filename(image_id, label.ext))):
                    labels[tag] = label
                else:
                    invalidate += 1
            obj.labels.clear()
            obj.labels.update(labels)
            kept[image_id] = obj
        self._datastore.objects.clear()
        self._datastore.objects.update(kept)
        return invalidate

    # ------------------------------------------------------------------ writes
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded study in ``<workspace>/datastore/uploads`` (checked by the upload endpoint first)."""
        suffix = upload_suffix(image_filename, STUDY_SUFFIXES)
        if suffix is None:
            raise Forbidden(f"cannot store {os.path.basename(image_filename)!r}: studies are {STUDY_SUFFIXES}")
        image_id = check_id(image_id or self._safe_name(_stem(os.path.basename(image_filename))))
        obj = self._obj(image_id)
        if obj is not None and obj.image.info.get("source") == _STUDIES:
            raise Conflict(f"image id {image_id!r} is a study of the studies folder; upload under another id "
                           "(?image=<new id>).")
        if obj is not None:  # replacing an upload: drop the old file (its suffix may differ)
            os.unlink(self._obj_path(obj))
        name = image_id + suffix
        dest = os.path.join(self._datastore.image_path(), name)
        from filelock import FileLock

        with FileLock(self._lock_file):
            shutil.copyfile(image_filename, dest)
            info = dict(image_info or {})
            info.update({"ts": int(time.time()), "name": name, "source": _UPLOADS})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=suffix))
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        obj = self._obj(image_id)
        if obj is None:
            raise ImageNotFoundException(f"Image {image_id} not found")
        if obj.image.info.get("source") == _STUDIES:
            raise Forbidden(f"{image_id!r} is a file of the studies folder, which this server does not modify; "
                            "remove the file there yourself (uploaded studies can be deleted here).")
        for tag in list(obj.labels):
            self.remove_label(image_id, tag)
        os.unlink(self._obj_path(obj))
        self.refresh()

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_id(image_id)
        check_tag(label_tag)
        if self._obj(image_id) is None:
            raise ImageNotFoundException(f"Image {image_id} not found")
        if upload_suffix(label_filename, LABEL_SUFFIXES) == ".bin":  # OHIF's raw mask: onto the image grid
            from monailabel.datastore.utils.convert import binary_to_image

            converted = binary_to_image(self.get_image_uri(image_id), label_filename)
            try:
                return self.save_label(image_id, converted, label_tag, label_info)
            finally:
                os.unlink(converted)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_id(label_id)
        check_tag(label_tag)
        super().remove_label(label_id, label_tag)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        check_id(label_id)
        check_tag(label_tag)
        return super().get_label_uri(label_id, label_tag)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        if self._obj(image_id) is None:
            raise ImageNotFoundException(f"Image {image_id} not found")
        protected = {"name", "source", "reference_mask", "ts"}
        super().update_image_info(image_id, {k: v for k, v in (info or {}).items() if k not in protected})
