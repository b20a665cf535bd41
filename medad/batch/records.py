"""The on-disk state of a ``medad score`` run: per-series records, the run settings and the run lock.

Layout of an output folder::

    OUT/run.json                         settings that change the outputs (provenance fields, overlays, --dicom-out)
    OUT/run.lock                         held (flock) while a run writes here
    OUT/series/<dir>/anomaly_map.nii.gz  float32 map in the source geometry          } written by
    OUT/series/<dir>/top1_slice0012.png  overlays of the most anomalous slices        } medad.inference.write_outputs
    OUT/series/<dir>/pm.dcm, seg.dcm     DICOM Parametric Map + BINARY SEG (``--dicom-out``)
    OUT/series/<dir>/record.json         written LAST, atomically: the series is done (ok, failed or skipped)
    OUT/results.csv                      one row per series     } regenerated from the index and the records
    OUT/manifest.jsonl                   one line per input file } at the end of every run (also after a resume)
    OUT/report.html                      series by score with thumbnails
    OUT/summary.json                     counts of the last run (and its wall time)

A series counts as done only when its ``record.json`` exists with status ``ok`` or ``skipped`` (``failed`` ones are
retried unless asked not to) and was made from the same input files (paths, sizes, mtimes) with the same settings
(:func:`series_fingerprint`). Every other file is written atomically (temporary name + ``os.replace``), so a run
killed at any point (even ``kill -9``) leaves complete files or none, and a rerun redoes exactly the series without a
valid record: nothing is lost or duplicated.

The records hold no timings that end up in ``results.csv``/``manifest.jsonl``, so an interrupted and resumed run gives
byte-identical tables to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..io._atomic import write_text_atomic

__all__ = ["RECORD_NAME", "SeriesOutcome", "OutputBusyError", "OutputWriteError", "RunConfigError",
           "acquire_run_lock",
           "check_run_config", "config_hash", "read_record", "release_run_lock", "remove_stale_temporaries",
           "run_config", "series_dir_name", "series_fingerprint", "write_record"]

RECORD_NAME = "record.json"
RECORD_VERSION = 1


@dataclass
class SeriesOutcome:
    """What happened to one series; serialized as ``record.json`` (the done-marker, written last).

    Attributes:
        key: the :class:`medad.io.SeriesRecord` key (SeriesInstanceUID, ``#n`` for split series, a path for NIfTI).
        dir: folder name under ``OUT/series``.
        status: ``"ok"``, ``"failed"`` or ``"skipped"`` (loaded but not something to score, e.g. a label map).
        stage: where it failed or was skipped: ``"load"``, ``"score"``, ``"write"``, ``"stow"`` (empty when ok).
        error: one-line reason (no patient identifiers); for ``skipped`` and for medad's own checks,
            ``"<reason code>: <detail>"``.
        warning: for an ``ok`` series scored with a caveat (``"non_finite: ..."``: NaN/Inf voxels set to the volume
            minimum; ``"own_plane: ..."``: too thin along the requested axis, scored in its acquisition plane).
        fingerprint: :func:`series_fingerprint` of the inputs + settings the record was made with.
        series: identifying fields of the source series (UIDs, modality, description, ...).
        n_slices, volume_score, top_slices, top_slice_scores, slice_scores: scores (``slice_scores`` in source order;
            calibrated when the detector carries a calibration); raw_volume_score: the uncalibrated volume score;
            flagged: above the operating point (None: uncalibrated).
        outputs: paths relative to ``OUT`` (``nifti``, ``pngs``, ``pm``, ``seg``) and ``stow`` status.
        grading, uids, provenance: as :class:`medad.inference.OutputRecord` (grading summary, PM/SEG UIDs,
            provenance fields).
        seconds: wall time spent on the series: ``{"load": decode in a worker, "score": model, "write": outputs
            (+ STOW)}`` (informative; not copied into the tables).
    """

    key: str
    dir: str
    status: str
    fingerprint: str
    series: dict[str, Any]
    stage: str = ""
    error: str = ""
    warning: str = ""
    n_slices: int = 0
    volume_score: Optional[float] = None
    raw_volume_score: Optional[float] = None
    flagged: Optional[bool] = None
    top_slices: list[int] = field(default_factory=list)
    top_slice_scores: list[float] = field(default_factory=list)
    slice_scores: list[float] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    grading: dict[str, Any] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    version: int = RECORD_VERSION

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"

    def scores(self) -> dict[str, Any]:
        """The scores as :func:`medad.inference.result_scores` gives them (for :func:`medad.inference.results_row`)."""
        return {"n_slices": self.n_slices, "volume_score": self.volume_score, "top_slices": self.top_slices,
                "top_slice_scores": self.top_slice_scores, "slice_scores": self.slice_scores,
                "raw_volume_score": self.raw_volume_score, "flagged": self.flagged}

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "SeriesOutcome":
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in d.items() if k in names})


def series_dir_name(key: str, modality: str = "", series_number: Optional[int] = None) -> str:
    """Stable, filesystem-safe folder name for a series: ``<modality>_<number>_<12 hex of sha1(key)>``.

    The hash makes it unique (split series ``UID#2``, NIfTI paths); modality and number make it readable.
    """
    h = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]  # file names need not be UTF-8
    mod = re.sub(r"[^A-Za-z0-9]+", "", modality or "")[:8] or "VOL"
    num = f"{series_number:04d}" if isinstance(series_number, int) and series_number >= 0 else "0000"
    return f"{mod}_{num}_{h}"


def config_hash(config: dict) -> str:
    """Short hash of the output-relevant settings (``run.json``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def series_fingerprint(files: Sequence[str], config_digest: str) -> str:
    """Hash of the input files' (path, size, mtime) and the settings: a record is reused only if this matches."""
    h = hashlib.sha256(config_digest.encode())
    for f in files:
        try:
            st = os.stat(f)
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{f}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def write_record(series_dir: str | os.PathLike, outcome: SeriesOutcome) -> Path:
    """Write ``record.json`` atomically: the last file written for a series."""
    return write_text_atomic(Path(series_dir) / RECORD_NAME, outcome.to_json() + "\n")


def read_record(series_dir: str | os.PathLike) -> Optional[SeriesOutcome]:
    """The series' record, or None when absent or unreadable (an unreadable record means "not done")."""
    path = Path(series_dir) / RECORD_NAME
    try:
        return SeriesOutcome.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def remove_stale_temporaries(out_dir: str | os.PathLike) -> int:
    """Delete temporary files (``.name.tmp-PID...``) left by a killed run; returns how many were removed."""
    n = 0
    for root, _, names in os.walk(out_dir):
        for name in names:
            if name.startswith(".") and ".tmp-" in name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, name))
                    n += 1
    return n


class OutputWriteError(RuntimeError):
    """The output folder cannot be written (disk full, quota, read-only file system, no permission): the run stops.

    Series finished before stay done (their records are complete); rerunning the same command once there is space
    scores the rest and writes the tables.
    """

    def __init__(self, out, cause: OSError | None = None, what: str = "outputs"):
        why = f"{os.strerror(cause.errno)} (errno {cause.errno})" if cause is not None and cause.errno else (
            str(cause) if cause is not None else "unknown error")
        super().__init__(f"cannot write the {what} to {out}: {why}. Series finished so far are kept; free space "
                         "(or fix the permissions) and rerun the same command to finish the job.")
        self.cause = cause


class OutputBusyError(RuntimeError):
    """Another run is writing to the same output folder."""


class RunConfigError(ValueError):
    """The output folder holds results made with other settings."""


def acquire_run_lock(out_dir: str | os.PathLike):
    """Hold ``OUT/run.lock`` (``flock``) while a run writes there; the OS releases it if the process dies.

    Raises:
        OutputBusyError: another run holds it.
    """
    import fcntl

    path = Path(out_dir) / "run.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        owner = fh.read().strip()
        fh.close()
        raise OutputBusyError(f"another medad score run ({owner or 'unknown pid'}) is writing to {out_dir}; wait for "
                              "it to finish or use another --out folder") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}\n")
    fh.flush()
    return fh


def release_run_lock(fh) -> None:
    """Release a lock from :func:`acquire_run_lock` (None is ignored)."""
    if fh is not None and not fh.closed:
        import fcntl

        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def run_config(provenance: dict, *, overlays: int, dicom_out: bool, pm: str = "float") -> dict:
    """``run.json``: everything that changes the outputs (not workers, batch size, device, filters): the provenance
    fields (:func:`medad.inference.provenance`: model and runner settings, the operating point) and the output
    options."""
    return {**provenance, "overlays": int(overlays), "dicom_out": bool(dicom_out),
            **({"pm": pm} if dicom_out and pm != "float" else {})}


def check_run_config(out: Path, config: dict, overwrite: bool) -> None:
    """Refuse an ``out`` folder whose ``run.json`` differs from ``config`` (unless ``overwrite``), then write it."""
    path = out / "run.json"
    if path.is_file() and not overwrite:
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old is not None and old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise RunConfigError(
                f"{out} holds results made with other settings (differences: {', '.join(diff)}). Use a new --out "
                "folder, or pass --overwrite to rescore everything there with the new settings.")
    write_text_atomic(path, json.dumps(config, indent=1, sort_keys=True) + "\n")
