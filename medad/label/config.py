"""``--conf`` options of the medad MONAI Label app.

MONAI Label passes ``--conf key value`` pairs to the app as a ``dict[str, str]``. :meth:`LabelConfig.from_conf`
parses and checks them once, at start-up, so a typo fails the start with a message naming the option.

============================  ====================================================================================
option                        meaning (default)
============================  ====================================================================================
``backbone``                  ``ViT-L-14-336`` or ``tiny`` (tests, CPU demos); default: the adapters' backbone, else ViT-L-14-336
``weights``                   backbone weights file (OpenAI ``.pt``, open_clip state dict, safetensors); none = the
                              one imported with ``medad weights import`` (or random init for ``tiny``)
``adapters``                  MVFA/medad adapter checkpoint (carries thresholds, normalizers, memory bank), ``demo``
                              for medad's embedded demo model (tiny backbone, synthetic phantoms), or ``none``
                              (zero-shot: fresh adapters) (``demo`` unless ``weights`` is given, as ``medad score``)
``object_name``               object name used in the text prompts, e.g. ``Brain``, ``Liver`` (checkpoint's/``Brain``)
``support``                   normal studies for the few-shot memory bank at start-up: a folder of NIfTI files/DICOM
                              series folders, or a single file/folder (none)
``shots``                     slices taken from each support / reviewer-normal study for the bank (4)
``thresholds``                three increasing cut-offs in [0, 1] for anomaly_low/mid/high, e.g. ``0.5,0.7,0.9``
                              (the checkpoint's)
``device``                    ``cpu``, ``cuda``, ``cuda:1`` (``cuda`` when available, else ``cpu``)
``precision``                 ``auto``, ``fp32`` or ``bf16`` (``auto``: bf16 where the device computes it natively)
``site_checkpoint``           where the reviewer loop saves adapters + grown bank (``<workspace>/site_adapters.pt``);
                              loaded in place of ``adapters`` when present
``normal_tag``                datastore label tag that marks a reviewer-confirmed normal study (``normal``)
``empty_final_is_normal``     also treat an all-zero ``final`` label as normal: 3D Slicer's and OHIF's *Submit* of a
                              cleared segmentation marks the study normal (``true``)
``top_k``                     number of top slices in the result JSON (5)
``write_dicom``               write a Parametric Map + SEG for DICOM inputs and STOW them to a DICOMweb datastore
                              (``true``)
``workspace``                 folder for the app's own files: datastore bookkeeping (``datastore_v2.json``,
                              ``.lock``), labels, uploaded studies, the site checkpoint, the reviewer-loop report
                              (``$MEDAD_HOME/label/<studies name>-<digest of its path>``): nothing is written into
                              the studies folder
``max_upload_mb``             largest upload (study, label, image to score) in MiB; larger -> 413 (512)
``infer_workers``             inferences run at the same time, in worker threads off the event loop (1)
``infer_queue``               inferences waiting at most; more -> 503 with ``Retry-After`` (32)
``guard_min_kept``            the reviewer loop activates a new site checkpoint only if it keeps at least this fraction
                              of the lesion voxels the active model labels on known lesion studies (0.5)
``guard_max_studies``         known lesion studies the guard checks at most (5)
``runner.<name>``             passed to ``medad.inference.VolumeRunner`` as keyword ``<name>`` (JSON value)
============================  ====================================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from medad.inference.grading import GRADE_LABELS

__all__ = ["LabelConfig", "ConfigError", "default_workspace", "parse_thresholds", "LABELS", "MODEL_NAME"]

#: Graded labels returned to the viewers (index 0 is background): the grades of :mod:`medad.inference.grading`.
LABELS = {name: grade for grade, name in enumerate(GRADE_LABELS, start=1)}
#: Name of the infer/train task.
MODEL_NAME = "anomaly"

_KNOWN = {"backbone", "weights", "adapters", "object_name", "support", "shots", "thresholds", "device", "precision",
          "site_checkpoint", "normal_tag", "empty_final_is_normal", "top_k", "write_dicom", "models", "workspace",
          "max_upload_mb", "infer_workers", "infer_queue", "guard_min_kept", "guard_max_studies"}
# Options MONAI Label or its sample apps use; accepted and ignored by this app.
_IGNORED = {"zoo_source", "sam2", "skip_trainers", "skip_strategies", "skip_scoring", "server_mode", "preload",
            "heuristic_planner", "use_pretrained_model", "epistemic_enabled", "tta_enabled"}


def default_workspace(studies: str) -> str:
    """``$MEDAD_HOME/label/<studies folder name>-<12 hex of its real path>`` (a DICOMweb url: of the url): the app's
    own files for one studies folder, outside it."""
    import hashlib

    from medad.io.discovery import safe_name
    from medad.weights import cache_dir

    s = str(studies).rstrip("/")
    remote = s.startswith(("http://", "https://"))
    key = s if remote else os.path.realpath(os.path.expanduser(s))
    name = safe_name(key.split("://", 1)[-1].split("/", 1)[0] if remote else os.path.basename(key))
    return str(cache_dir() / "label" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")


class ConfigError(ValueError):
    """A ``--conf`` option has a bad value."""


def _bool(key: str, value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--conf {key} {value!r}: expected true or false.")


def _int(key: str, value: str, low: int = 1) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--conf {key} {value!r}: expected an integer >= {low}.") from None
    if n < low:
        raise ConfigError(f"--conf {key} {value!r}: expected an integer >= {low}.")
    return n


def _float(key: str, value: str, low: float, high: float) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not low <= x <= high:
        raise ConfigError(f"--conf {key} {value!r}: expected a number in [{low:g}, {high:g}].")
    return x


def parse_thresholds(value: Any, source: str = "thresholds") -> tuple[float, float, float]:
    """``"0.5,0.7,0.9"`` or a 3-sequence -> 3 strictly increasing floats in [0, 1] (anomaly_low, mid, high)."""
    try:
        items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
        t = tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={value!r}: expected three numbers like 0.5,0.7,0.9.") from None
    if len(t) != 3 or not all(0.0 <= x <= 1.0 for x in t) or not (t[0] < t[1] < t[2]):
        raise ConfigError(f"{source}={value!r}: expected three strictly increasing numbers in [0, 1] "
                          "(cut-offs of anomaly_low, anomaly_mid, anomaly_high), like 0.5,0.7,0.9.")
    return t  # type: ignore[return-value]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class LabelConfig:
    """Parsed app options (see the module docstring for each one)."""

    app_dir: str
    backbone: Optional[str] = None  # None: the adapters checkpoint's backbone, else ViT-L-14-336
    weights: Optional[str] = None
    adapters: Optional[str] = None
    object_name: Optional[str] = None
    support: Optional[str] = None
    shots: int = 4
    thresholds: Optional[tuple[float, float, float]] = None
    device: str = field(default_factory=_default_device)
    precision: str = "auto"
    workspace: str = ""
    site_checkpoint: str = ""
    normal_tag: str = "normal"
    empty_final_is_normal: bool = True
    top_k: int = 5
    write_dicom: bool = True
    max_upload_mb: float = 512.0
    infer_workers: int = 1
    infer_queue: int = 32
    guard_min_kept: float = 0.5
    guard_max_studies: int = 5
    runner_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.workspace:
            self.workspace = os.path.join(self.app_dir, "workspace")
        if not self.site_checkpoint:
            self.site_checkpoint = os.path.join(self.workspace, "site_adapters.pt")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    @property
    def report_path(self) -> str:
        """The reviewer loop's last report (``<workspace>/reviewer_loop.json``)."""
        return os.path.join(self.workspace, "reviewer_loop.json")

    @classmethod
    def from_conf(cls, app_dir: str, conf: Optional[Mapping[str, str]], studies: Optional[str] = None
                  ) -> "LabelConfig":
        """Parse MONAI Label's ``conf`` dict; unknown keys raise :class:`ConfigError` listing the valid ones.

        ``studies`` (the datastore folder or DICOMweb url) gives the default ``workspace``
        (:func:`default_workspace`); without it the default is ``<app_dir>/workspace``.
        """
        conf = dict(conf or {})
        kw: dict[str, Any] = {"app_dir": app_dir}
        runner: dict[str, Any] = {}
        for key, value in conf.items():
            if key.startswith("runner."):
                try:
                    runner[key[len("runner."):]] = json.loads(value)
                except (TypeError, json.JSONDecodeError):
                    runner[key[len("runner."):]] = value
            elif key in _IGNORED or key == "models":
                continue
            elif key not in _KNOWN:
                raise ConfigError(f"--conf {key}: unknown option. Valid: {', '.join(sorted(_KNOWN - {'models'}))}, "
                                  "runner.<VolumeRunner keyword>.")
        for key in ("backbone", "object_name", "normal_tag", "precision", "device"):
            if conf.get(key):
                kw[key] = conf[key]
        adapters = str(conf.get("adapters") or "").strip()
        if adapters.lower() == "none":  # zero-shot: fresh adapters
            conf.pop("adapters")
        elif adapters.lower() == "demo" or (not adapters and not conf.get("weights") and not conf.get("backbone")):
            kw["adapters"] = "demo"  # medad's embedded demo model, the default of medad score too
            conf.pop("adapters", None)
        for key in ("weights", "adapters", "support", "site_checkpoint", "workspace"):
            if conf.get(key):
                path = os.path.abspath(os.path.expanduser(conf[key]))
                if key not in ("site_checkpoint", "workspace") and not os.path.exists(path):
                    raise ConfigError(f"--conf {key} {conf[key]}: {path} does not exist. Give an existing path.")
                kw[key] = path
        if "workspace" not in kw and studies:
            kw["workspace"] = default_workspace(studies)
        for key in ("shots", "top_k", "infer_workers", "infer_queue", "guard_max_studies"):
            if conf.get(key):
                kw[key] = _int(key, conf[key])
        for key, low, high in (("max_upload_mb", 1e-6, float("inf")), ("guard_min_kept", 0.0, 1.0)):
            if conf.get(key):
                kw[key] = _float(key, conf[key], low, high)
        if conf.get("thresholds"):
            kw["thresholds"] = parse_thresholds(conf["thresholds"], "--conf thresholds")
        for key in ("empty_final_is_normal", "write_dicom"):
            if key in conf:
                kw[key] = _bool(key, conf[key])
        if kw.get("precision", "auto") not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--conf precision {kw['precision']!r}: expected auto, fp32 or bf16.")
        kw["runner_options"] = runner
        return cls(**kw)
