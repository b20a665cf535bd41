"""The ``medad`` command line: one sub-command per module in this package.

Each module ``medad/cli/<name>.py`` exposes ``add_parser(subparsers)`` (registering ``<name>``) and ``run(args) -> int``;
modules are discovered, so a front-end adds a command without touching this file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Optional, Sequence

from .. import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medad", description="Anomaly detection in medical images (MVFA on CLIP).")
    parser.add_argument("--version", action="version", version=f"medad {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as e:  # noqa: BLE001 - one broken front-end must not take the others down
            print(f"medad: command {info.name!r} is unavailable ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        if hasattr(module, "add_parser") and hasattr(module, "run"):
            module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
