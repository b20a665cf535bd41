"""The UID policy of every DICOM object medad writes (Parametric Map and SEG).

UIDs are derived deterministically (``pydicom.uid.generate_uid(entropy_srcs=...)``, a 2.25 UID from a hash) from what
determines the content:

* the **source**: the series key of the source volume (``meta["series_key"]``: the SeriesInstanceUID, with ``#n`` for
  a series split in several volumes; else ``meta["series_uid"]``),
* a **salt** (:func:`uid_salt`): a digest of the provenance fields (medad version, backbone and its weights digest,
  the detector fingerprint with adapters, memory bank, normalizers, options and calibration, the volume runner's
  settings and the operating point, see :mod:`medad.inference.provenance`), the grading thresholds and the segment
  labels,
* the **content** (:func:`content_digest`): a digest of the anomaly map itself (shape and float32 values), so two
  maps that differ in anything (31 instead of 32 slices, a model whose provenance was not passed) never share a UID,
* the **object**: PM (float or integer) or SEG, series or instance.

So a rerun or resumed run with the same model and settings rewrites the same instances (a PACS keeps one copy), while
another model, other runner settings, other thresholds or other source slices give new Series and SOP Instance UIDs
instead of objects a PACS would silently drop as duplicates (Orthanc answers ``AlreadyStored``). ``medad score``,
the bundle and the MONAI Label app all call :func:`output_uids` through :func:`medad.inference.write_outputs`; the
DICOM writers in :mod:`medad.io` take the UIDs explicitly and decide none themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["OutputUIDs", "content_digest", "output_uids", "source_key", "uid_salt"]


@dataclass(frozen=True)
class OutputUIDs:
    """Series and SOP Instance UIDs of the Parametric Map (float), the integer Parametric Map and the SEG of one
    source series."""

    pm_series: str
    pm_instance: str
    seg_series: str
    seg_instance: str
    pm_int_series: str = ""
    pm_int_instance: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def uid_salt(provenance: Mapping[str, Any], thresholds: Sequence[float], labels: Sequence[str] = ()) -> str:
    """Short digest (16 hex) of the provenance fields, the grading thresholds and the segment labels."""
    blob = json.dumps({"provenance": dict(provenance), "thresholds": [float(t) for t in thresholds],
                       **({"labels": [str(v) for v in labels]} if labels else {})}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def content_digest(values: Any) -> str:
    """Digest (32 hex) of an anomaly map's content: its shape and float32 values (a tensor is read on the CPU)."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(values, dtype=np.float32))
    h = hashlib.sha256(f"{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:32]


def source_key(meta: Mapping[str, Any]) -> str:
    """The identity of the source series in a volume's ``meta``: ``series_key``, else ``series_uid``."""
    key = str(meta.get("series_key") or meta.get("series_uid") or "")
    if not key:
        raise ValueError("the source volume has no series_key/series_uid in its meta: load DICOM series with "
                         "medad.io.load_series/load_volume")
    return key


def output_uids(source: str, salt: str, content: str) -> OutputUIDs:
    """The PM and SEG UIDs for source series key ``source`` under ``salt`` (:func:`uid_salt`) for a map with
    :func:`content_digest` ``content``."""
    from pydicom.uid import generate_uid

    if not content:
        raise ValueError("output_uids needs the content digest of the map (content_digest)")

    def uid(what: str) -> str:
        return generate_uid(entropy_srcs=["medad", source, salt, content, what])

    return OutputUIDs(pm_series=uid("pm-series"), pm_instance=uid("pm-instance"), seg_series=uid("seg-series"),
                      seg_instance=uid("seg-instance"), pm_int_series=uid("pm-int-series"),
                      pm_int_instance=uid("pm-int-instance"))
