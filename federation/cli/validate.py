"""`validate PATH`: check local data and print what would be shared about it (never the data)."""

from __future__ import annotations

import argparse
import sys

from federation.data import DataError, DataStats, describe, load_records


def check_data(path: str, model_path: str | None = None, seq_len: int = 256) -> DataStats:
    """Load and describe local data; raises DataError (file:line messages) on any problem."""
    records = load_records(path)
    tokenizer = None
    if model_path:
        from federation.task import load_tokenizer

        tokenizer = load_tokenizer(model_path)
    return describe(records, tokenizer, max_length=seq_len)


def print_stats(path: str, stats: DataStats) -> None:
    kinds = ", ".join(f"{n} {k}" for k, n in stats.kinds.items())
    print(f"{path}: {stats.records} records ({kinds}), {stats.characters:,} characters")
    if stats.tokens is not None:
        print(
            f"  {stats.tokens:,} tokens after truncation; {stats.truncated} truncated, {stats.untrainable} untrainable"
        )
    print(f"  fingerprint sha256 {stats.fingerprint}")
    print("  only these numbers and the fingerprint leave this machine; the records never do")


def run(args: argparse.Namespace) -> int:
    try:
        stats = check_data(args.path, args.model, args.seq_len)
    except DataError as err:
        print(f"{args.path}: the data has problems, nothing was sent:\n{err}", file=sys.stderr)
        return 2
    print_stats(args.path, stats)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check local training data (file:line errors), print its fingerprint")
    parser.add_argument("path", help="a .jsonl/.txt file or a folder of them")
    parser.add_argument("--model", help="local checkpoint whose tokenizer counts tokens")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.set_defaults(func=run)
