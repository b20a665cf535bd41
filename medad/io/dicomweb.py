"""STOW-RS upload of written DICOM files (maps, SEGs, source series) to a DICOMweb server with dicomweb-client."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["StowError", "StowResult", "stow"]


class StowError(RuntimeError):
    """The server refused some instances (``result`` holds what was stored and what failed)."""

    def __init__(self, message: str, result: StowResult):
        super().__init__(message)
        self.result = result


@dataclass
class StowResult:
    """SOPInstanceUIDs the server confirmed and ``(SOPInstanceUID, failure reason code)`` it refused."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def stow(
    url: str,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 16,
    headers: dict[str, str] | None = None,
    session=None,
    timeout: float = 60.0,
    client=None,
) -> StowResult:
    """Store DICOM files on a DICOMweb server (STOW-RS), ``batch_size`` instances per request.

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        paths: DICOM files (Part-10) to upload.
        batch_size: instances per multipart request.
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        session: a ``requests.Session`` (auth, certificates); default a new one.
        timeout: seconds per request.
        client: an existing ``dicomweb_client.DICOMwebClient`` (then ``url``/``headers``/``session`` are ignored).

    Returns:
        :class:`StowResult`. Raises :class:`StowError` if the server reports failed instances, and
        ``requests.HTTPError`` for HTTP errors (bad URL, auth, server down).
    """
    import pydicom

    if client is None:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=url, session=session, headers=headers, timeout=timeout)
    result = StowResult()
    paths = [str(p) for p in paths]
    for i in range(0, len(paths), max(1, batch_size)):
        datasets = [pydicom.dcmread(p) for p in paths[i:i + batch_size]]
        response = client.store_instances(datasets=datasets)
        failed = {}
        if response is not None:
            for item in response.get("FailedSOPSequence", []) or []:
                failed[str(item.get("ReferencedSOPInstanceUID", "?"))] = str(item.get("FailureReason", "?"))
        for ds in datasets:
            uid = str(ds.SOPInstanceUID)
            if uid in failed:
                result.failed.append((uid, failed[uid]))
            else:
                result.stored.append(uid)
    if result.failed:
        raise StowError(f"{url}: the server refused {len(result.failed)} of {len(paths)} instances "
                        f"(failure reasons {sorted({r for _, r in result.failed})})", result)
    return result
