"""`verify PATH_OR_URL`: check a release's signature, file hashes and provenance before trusting it."""

from __future__ import annotations

import argparse
import sys

from federation.verify import SourceError, VerificationError, verify


def run(args: argparse.Namespace) -> int:
    try:
        result = verify(args.source, args.key, repo_id=args.repo, revision=args.revision)
    except SourceError as err:
        print(f"cannot verify: {err}", file=sys.stderr)
        return 2
    except VerificationError as err:
        print(f"FAILED: {args.source} is not the release the platform signed:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    where = f"{result.repo_id or result.folder}@{result.revision}"
    print(f"OK {where}: signature valid for key {result.key_fingerprint}")
    for name, sha in sorted(result.files.items()):
        print(f"  {sha}  {name}")
    print(f"  every file matches provenance.json; base model {result.base_model} pinned by {result.base_model_files}"
          f" file hashes; {result.rounds} rounds, {len(result.nodes)} contributor nodes")  # fmt: skip
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "verify", help="check a release's signature (platform key), file sha256s and provenance; non-zero if not"
    )
    parser.add_argument("source", help="a release folder, or its URL (<site>/releases/<org>/<name>/[<revision>/])")
    parser.add_argument(
        "--key",
        help="the platform's public key, a path or URL (default for a URL: <site>/releases/signing-key.pub)",
    )
    parser.add_argument("--repo", help="for a folder: the repo id (<org>/<name>) it must be a release of")
    parser.add_argument("--revision", help="for a folder: the revision it must be (recomputed from its files)")
    parser.set_defaults(func=run)
