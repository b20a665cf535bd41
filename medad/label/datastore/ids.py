"""Checks every datastore request goes through: image ids, label tags, paths and uploaded files.

MONAI Label 0.8.5 joins image ids and label tags from the request into file paths without checking them, so
``PUT /datastore/?image=../x``, ``PUT /datastore/label?tag=../../x`` and ``DELETE /datastore/image?id=../x`` write
or delete outside the studies folder, and it accepts uploads of any size and type. medad's datastores call the
functions below first; each failure is a :class:`~medad.label.server.errors.RequestError` with a 4xx status and a
message that says what is allowed.

- An **id** or **tag** is a plain name: letters, digits, ``.``, ``_``, ``-`` (at most 128 characters, not starting with
  ``.``), so it can never name another folder. DICOMweb image ids (SeriesInstanceUIDs) pass this rule.
- A **path** the server reads or writes for a request must resolve (symlinks followed) inside one of the app's roots
  (the studies folder, the workspace, the DICOMweb cache): :func:`inside`.
- An **upload** must be at most ``max_bytes`` long, carry one of the allowed suffixes and be readable as a volume
  (its header parsed by SimpleITK); the suffix decides the stored file's extension.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..server.errors import BadRequest, PayloadTooLarge, UnsupportedMedia

__all__ = ["CheckedLabelInfo", "LABEL_SUFFIXES", "STUDY_SUFFIXES", "check_id", "check_tag", "check_upload", "inside", "upload_suffix"]

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
#: Study files the local datastore lists and accepts as uploads: medad's single-file volume formats.
STUDY_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Label files accepted by ``PUT /datastore/label`` (3D Slicer sends ``.nrrd``/``.seg.nrrd``, OHIF a raw ``.bin``).
LABEL_SUFFIXES: tuple[str, ...] = (".seg.nrrd", *STUDY_SUFFIXES, ".bin")


def _check_name(value: object, what: str, example: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise BadRequest(f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-' only (no path, no "
                         f"'..', at most 128 characters), e.g. {example}.")
    return value


def check_id(value: object, what: str = "image id") -> str:
    """``value`` if it is a plain id (see the module docstring), else :class:`BadRequest` (400)."""
    return _check_name(value, what, "'case_001' or a SeriesInstanceUID")


def check_tag(value: object) -> str:
    """``value`` if it is a plain label tag, else :class:`BadRequest` (400)."""
    return _check_name(value, "label tag", "'final', 'normal' or 'anomaly_map'")


def inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> bool:
    """True if ``path`` (symlinks resolved) is one of ``roots`` or lies below one of them."""
    p = Path(os.path.realpath(path))
    for root in roots:
        r = Path(os.path.realpath(root))
        if p == r or r in p.parents:
            return True
    return False


def upload_suffix(filename: str | None, allowed: Sequence[str]) -> str | None:
    """The allowed suffix ``filename`` ends with (longest match, case-insensitive), else None."""
    name = (filename or "").lower()
    return next((s for s in sorted(allowed, key=len, reverse=True) if name.endswith(s)), None)


def check_upload(path: str | os.PathLike, filename: str | None, allowed: Sequence[str], max_bytes: int,
                 what: str = "upload") -> str:
    """Check an uploaded file (saved at ``path``, sent as ``filename``); returns its suffix.

    Raises:
        PayloadTooLarge (413): larger than ``max_bytes``.
        UnsupportedMedia (415): no allowed suffix, or not readable as an image (``.bin`` OHIF masks excepted).
    """
    size = os.path.getsize(path)
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size / 2**20:.1f} MiB; this server accepts at most "
                              f"{max_bytes / 2**20:.0f} MiB (--conf max_upload_mb).")
    suffix = upload_suffix(filename, allowed)
    if suffix is None:
        raise UnsupportedMedia(f"{what} {os.path.basename(filename or '') or '(no file name)'!r}: not a supported "
                               f"file type; send one of {', '.join(allowed)}.")
    if size == 0:
        raise UnsupportedMedia(f"{what} {os.path.basename(filename or '')!r} is empty.")
    if suffix == ".bin":
        return suffix
    from medad.io import read_image_geometry

    try:
        size_xyz, _ = read_image_geometry(path)
    except Exception:  # noqa: BLE001 - SimpleITK raises RuntimeError for anything it cannot parse
        raise UnsupportedMedia(f"{what} {os.path.basename(filename or '')!r} is not a readable {suffix} image "
                               "(its header could not be parsed); send the volume file itself.") from None
    if len(size_xyz) != 3 or min(size_xyz) < 1:
        raise UnsupportedMedia(f"{what} {os.path.basename(filename or '')!r} is not a 3D volume "
                               f"(size {list(size_xyz)}).")
    return suffix


class CheckedLabelInfo:
    """Label-info reads and updates with checked ids and tags; mixed in before MONAI Label's datastore class by both
    medad datastores (local and DICOMweb)."""

    def get_label_info(self, label_id: str, label_tag: str) -> dict:
        check_id(label_id)
        check_tag(label_tag)
        return super().get_label_info(label_id, label_tag)  # type: ignore[misc]

    def update_label_info(self, label_id: str, label_tag: str, info: dict) -> None:
        check_id(label_id)
        check_tag(label_tag)
        super().update_label_info(label_id, label_tag, info)  # type: ignore[misc]
