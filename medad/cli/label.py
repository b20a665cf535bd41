"""``medad label``: start the MONAI Label server with the medad app, offline and on loopback by default.

What it does on top of ``monailabel start_server``:

- installs the pydicom-3 shim and serves ``medad.label.asgi:app`` (MONAI Label 0.8.5 cannot start otherwise);
- binds ``127.0.0.1`` unless ``--host`` is given (MONAI Label's default is ``0.0.0.0``);
- passes ``--conf zoo_source local`` (no model-zoo query) and never creates a SAM2 task (no HuggingFace download);
  for a DICOMweb datastore it puts a stub ``itkimage2segimage`` on PATH so MONAI Label does not download dcmqi from
  GitHub (the medad app skips that download anyway and writes DICOM SEG with highdicom);
- maps the medad options (``--backbone``, ``--adapters``, ...) to ``--conf`` pairs; without ``--adapters``,
  ``--weights`` or ``--backbone`` it serves the embedded demo model, as ``medad score`` does;
- keeps everything the server writes out of the studies folder and the repository: MONAI Label's bookkeeping, labels,
  uploads, the site checkpoint, and (for the repository's app) a copy of the app with its ``logs/`` go to the
  workspace, ``$MEDAD_HOME/label/<studies name>-<digest>`` (``--workspace`` to choose).

Examples::

    medad label --studies sample_data/mr_flair_phantom                         # demo model, http://127.0.0.1:8000
    medad label --studies http://127.0.0.1:8042/dicom-web --modality CT --adapters site.pt --port 8001
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["add_parser", "run", "build_server_argv", "default_app_dir", "main"]

logger = logging.getLogger(__name__)

# medad option -> --conf key
_CONF_OPTIONS = {"backbone": "backbone", "weights": "weights", "adapters": "adapters", "object_name": "object_name",
                 "support": "support", "shots": "shots", "thresholds": "thresholds", "device": "device",
                 "precision": "precision", "site_checkpoint": "site_checkpoint", "workspace": "workspace"}


def default_app_dir() -> Optional[Path]:
    """``apps/medad_label`` of this checkout (or of the working directory), None if neither has it."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        app = root / "apps" / "medad_label"
        if (app / "main.py").is_file():
            return app
    return None


def _generated_app_dir() -> Path:
    """A minimal app under ``$MEDAD_HOME/label_app`` for installs without the repository's ``apps/``."""
    from medad.label.app import write_minimal_app
    from medad.weights import cache_dir

    return Path(write_minimal_app(cache_dir() / "label_app"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``label`` sub-command to an ``argparse`` sub-parser collection and return its parser."""
    p = subparsers.add_parser("label", help="serve anomaly maps to 3D Slicer / OHIF (MONAI Label server)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--studies", "-s", required=True,
                   help="folder of NIfTI/NRRD volumes, or a DICOMweb root such as http://127.0.0.1:8042/dicom-web")
    p.add_argument("--app", "-a", default=None,
                   help="MONAI Label app folder, run in place (default: a copy of the checkout's apps/medad_label, "
                        "else of a minimal generated app, in the workspace)")
    p.add_argument("--workspace", "-w", default=None,
                   help="folder for the server's own files: datastore bookkeeping, labels, uploads, site checkpoint, "
                        "app copy and logs (default $MEDAD_HOME/label/<studies name>-<digest of its path>)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", "-p", type=int, default=8000, help="HTTP port (default 8000)")
    g = p.add_argument_group("model (each maps to --conf KEY VALUE, see docs/monailabel.md)")
    g.add_argument("--backbone", help="ViT-L-14-336 (default: the adapters' backbone) or tiny")
    g.add_argument("--weights", help="backbone weights file (default: the one imported with `medad weights import`)")
    g.add_argument("--adapters", help="adapter checkpoint, 'demo' (the embedded demo model: the default without "
                                      "--weights/--backbone, as medad score) or 'none' (zero-shot)")
    g.add_argument("--object-name", dest="object_name", help="prompt object name, e.g. Brain, Liver")
    g.add_argument("--support", help="normal studies for the few-shot memory bank (file or folder)")
    g.add_argument("--shots", type=int, help="slices per normal study added to the memory bank (default 4)")
    g.add_argument("--thresholds", help="anomaly_low,mid,high cut-offs in [0,1], e.g. 0.5,0.7,0.9")
    g.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="backbone precision (default auto: bf16 where the device computes it natively, else fp32)")
    g.add_argument("--site-checkpoint", dest="site_checkpoint",
                   help="where the reviewer loop saves the grown memory bank (default <workspace>/site_adapters.pt)")
    p.add_argument("--conf", "-c", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="any other app option, e.g. --conf top_k 10 --conf runner.batch_size 16")
    p.add_argument("--modality", default=None,
                   help="DICOMweb only: list series of this modality (CT by default in MONAI Label; 'any' = all)")
    p.add_argument("--log-level", dest="log_level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--dryrun", action="store_true",
                   help="check the options, print the equivalent monailabel command and exit without serving")


_DCMQI_STUB = """#!/bin/sh
echo "medad: dcmqi (itkimage2segimage) is not installed; medad converts labels to DICOM SEG with highdicom" >&2
exit 1
"""


def _dcmqi_stub_on_path() -> None:
    """Put a stub ``itkimage2segimage`` on PATH: MONAI Label downloads dcmqi from GitHub at start-up (offline: a
    failed start) unless the tool is found. The medad app skips that download itself; the stub covers other apps."""
    import shutil

    if shutil.which("itkimage2segimage"):
        return
    from medad.weights import cache_dir

    folder = cache_dir() / "label_bin"
    folder.mkdir(parents=True, exist_ok=True)
    stub = folder / "itkimage2segimage"
    if not stub.is_file() or stub.read_text() != _DCMQI_STUB:
        stub.write_text(_DCMQI_STUB)
    stub.chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def _workspace(args: argparse.Namespace) -> Path:
    from medad.label.config import default_workspace

    return Path(args.workspace).expanduser().resolve() if args.workspace else Path(default_workspace(args.studies))


def _app_copy(source: Path, workspace: Path) -> Path:
    """A copy of the app ``source`` in ``<workspace>/app`` (refreshed at every start): MONAI Label writes ``logs/``,
    ``model/`` and ``bin/`` into the app folder, which must not be the repository's."""
    import shutil

    dest = workspace / "app"
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__"),
                    dirs_exist_ok=True)
    return dest


def build_server_argv(args: argparse.Namespace, copy_app: bool = True) -> list[str]:
    """The ``monailabel start_server`` argument list for parsed ``medad label`` arguments (``copy_app``: put the
    default app's copy into the workspace; False only computes the arguments)."""
    workspace = _workspace(args)
    if args.app:
        app = Path(args.app)
    else:
        source = default_app_dir() or _generated_app_dir()
        app = _app_copy(source, workspace) if copy_app else workspace / "app"
    if copy_app and not (Path(app) / "main.py").is_file():
        raise SystemExit(f"medad label: no MONAI Label app at {app}: pass --app <folder with main.py> (the "
                         "repository ships apps/medad_label).")
    conf: dict[str, str] = {"zoo_source": "local"}
    for attr, key in _CONF_OPTIONS.items():
        value = getattr(args, attr, None)
        if value is not None:
            conf[key] = str(value)
    conf["workspace"] = str(workspace)
    for key, value in args.conf:
        conf[key] = value
    argv = ["start_server", "--app", str(app), "--studies", str(args.studies), "--host", args.host,
            "--port", str(args.port), "--uvicorn_app", "medad.label.asgi:app", "--log_level", args.log_level,
            "--verbose", args.log_level.upper()]
    for key, value in conf.items():
        argv += ["--conf", key, value]
    return argv


def run(args: argparse.Namespace) -> int:
    """Start the server (blocks until it is stopped). Returns the exit status."""
    from medad.label import install_pydicom_shim

    install_pydicom_shim()
    if args.modality:
        m = args.modality.strip()
        os.environ["MONAI_LABEL_DICOMWEB_SEARCH_FILTER"] = "{}" if m.lower() == "any" else f'{{"Modality": "{m}"}}'
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server (and the studies it serves) is reachable from other machines",
                       args.host)
    argv = build_server_argv(args, copy_app=not args.dryrun)
    from medad.label.config import ConfigError, LabelConfig

    conf = dict(zip(argv[argv.index("--conf") + 1::3], argv[argv.index("--conf") + 2::3]))
    try:
        LabelConfig.from_conf(argv[argv.index("--app") + 1], conf, studies=str(args.studies))  # fail before start
    except ConfigError as e:
        print(f"medad label: {e}", file=sys.stderr)
        return 2
    if str(args.studies).startswith(("http://", "https://")):
        _dcmqi_stub_on_path()
    if args.dryrun:
        import shlex

        print("options OK; equivalent command:\n  monailabel " + shlex.join(argv))
        return 0
    logger.info("workspace (datastore bookkeeping, labels, uploads, site checkpoint, logs): %s",
                conf.get("workspace"))
    from monailabel.main import Main

    main_ = Main()
    main_.action_start_server(main_.args_parser().parse_args(argv))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry point: ``python -m medad.cli.label --studies ...``."""
    parser = argparse.ArgumentParser("medad label", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
