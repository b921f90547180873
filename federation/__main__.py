"""`python -m federation COMMAND`: what a contributor runs on their own machine.

Each command lives in its own module with `add_parser(subparsers)`; this file only dispatches.
"""

from __future__ import annotations

import argparse
import sys

from federation.cli import join, node, prepare, validate, verify

COMMANDS = [validate, join, node, prepare, verify]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
