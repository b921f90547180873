"""`node --superlink HOST:PORT --data PATH`: validate local data, then run a real Flower SuperNode on it.

Bad data stops here with file:line errors: the node never connects, so it never joins a round.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from federation import procs
from federation.cli.validate import check_data, print_stats
from federation.data import DataError


def run(args: argparse.Namespace, *, runtime_bin: Callable[[Path], Path] = procs.node_runtime_bin) -> int:
    """Validate, then exec the SuperNode. `runtime_bin(home)` writes the folder whose `flwr-clientapp` the node runs
    (a test harness outside this package passes its own; contributors always get node_runtime's)."""
    data = str(Path(args.data).resolve())
    try:
        stats = check_data(data)
    except DataError as err:
        print(f"{data}: the data has problems; the node will not join until they are fixed:\n{err}", file=sys.stderr)
        return 2
    print_stats(data, stats)
    config: dict[str, str | int | float] = {"data-path": data, "name": args.name}
    if args.model:
        config["model-path"] = str(Path(args.model).resolve())
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    command = procs.supernode_command(args.superlink, args.port or procs.free_port(), config)
    print(f"starting SuperNode '{args.name}' → SuperLink {args.superlink}", flush=True)
    # Our `flwr-clientapp` first on PATH: the node runs only the installed ClientApp (federation.node_runtime).
    env = procs.flower_env(home, node_bin=runtime_bin(home))
    # Replace this process: signals (Ctrl-C, SIGTERM from a supervisor) reach the SuperNode directly.
    os.execve(command[0], command, env)
    return 0  # not reached


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "node",
        help="validate local data, then run an unauthenticated SuperNode (local experiments; contributors use join)",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", required=True, help="HOST:PORT of the campaign's SuperLink")
    parser.add_argument("--data", required=True, help="your local training data (.jsonl/.txt file or folder)")
    parser.add_argument("--name", default=os.uname().nodename, help="a name for this node (shown to staff)")
    parser.add_argument("--model", help="local base-model checkpoint (default: the path the campaign names)")
    parser.add_argument("--port", type=int, default=0, help="local port for the SuperNode's app runtime")
    parser.add_argument("--home", default=".bayanihan-node", help="folder for this node's Flower state")
