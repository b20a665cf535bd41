"""``medad weights``: import, verify, list and (explicitly) fetch backbone weight files."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("weights", help="manage CLIP backbone weight files (SHA-256 verified, offline cache)",
                       description="Backbone weights are never downloaded implicitly. Import a file you obtained "
                                   "(e.g. OpenAI ViT-L-14-336px.pt) once; `fetch` is an explicit opt-in download.")
    actions = p.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", help="verify FILE's SHA-256 and copy it into the medad cache")
    imp.add_argument("file")
    imp.add_argument("--sha256", help="accept a file that is not a known release if it has this hash")
    ver = actions.add_parser("verify", help="check FILE against the known (or given) SHA-256")
    ver.add_argument("file")
    ver.add_argument("--sha256")
    actions.add_parser("list", help="show the cache folder and the known releases")
    fetch = actions.add_parser("fetch", help="download a known release (needs internet; explicit opt-in)")
    fetch.add_argument("--backbone", default="ViT-L-14-336")
    fetch.add_argument("--tag", default="openai")
    return p


def run(args: argparse.Namespace) -> int:
    from .. import weights as W  # torch: imported only when the command runs (``medad --help`` stays fast)

    try:
        if args.action == "import":
            dest = W.import_weights(args.file, args.sha256)
            print(f"imported {args.file} -> {dest} (SHA-256 verified)")
        elif args.action == "verify":
            digest = W.verify_weights(args.file, args.sha256)
            backbone, tag = W.known_hashes().get(digest, ("user", "given hash"))
            print(f"OK {args.file} sha256={digest} ({backbone}/{tag})")
        elif args.action == "list":
            print(f"cache: {W.cache_dir() / 'weights'}")
            for digest, (backbone, tag) in W.known_hashes().items():
                cached = W.find_cached_weights(backbone)
                print(f"{backbone}/{tag} sha256={digest} {'imported: ' + str(cached) if cached else 'not imported'}")
        elif args.action == "fetch":
            print(f"fetched {W.fetch_weights(args.backbone, args.tag)}")
    except W.WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
