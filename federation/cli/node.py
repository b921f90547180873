"""`node --superlink HOST:PORT --data PATH`: validate local data, then run a real Flower SuperNode on it.

Bad data stops here with file:line errors: the node never connects, so it never joins a round.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from federation import procs
from federation.attack import MODES
from federation.cli.validate import check_data, print_stats
from federation.data import DataError

ATTACK_HELP = {
    "nan": "a NaN in the adapter",
    "wrong-shape": "a tensor of the wrong shape",
    "scale": "its update multiplied by 50",
    "sign-flip": "its update with the sign flipped",
}


def run(args: argparse.Namespace) -> int:
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
    if args.attack:
        warn_attack(args.attack)
        config["attack"] = args.attack
    home = Path(args.home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    command = procs.supernode_command(args.superlink, args.port or procs.free_port(), config)
    print(f"starting SuperNode '{args.name}' → SuperLink {args.superlink}", flush=True)
    # Our `flwr-clientapp` first on PATH: the node runs only the installed ClientApp (federation.node_runtime).
    env = procs.flower_env(home, node_bin=procs.node_runtime_bin(home))
    # Replace this process: signals (Ctrl-C, SIGTERM from a supervisor) reach the SuperNode directly.
    os.execve(command[0], command, env)
    return 0  # not reached


def warn_attack(mode: str) -> None:
    banner = "!" * 78
    print(
        f"{banner}\n!! ATTACK MODE '{mode}': this node will send HOSTILE updates ({ATTACK_HELP[mode]}).\n"
        "!! For tests and benchmarks of the server's defences only. Never point it at a real campaign.\n"
        f"{banner}",
        file=sys.stderr,
        flush=True,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "node",
        help="validate local data, then run an unauthenticated SuperNode (local experiments; contributors use join)",
    )
    parser.add_argument("--superlink", required=True, help="HOST:PORT of the campaign's SuperLink")
    parser.add_argument("--data", required=True, help="your local training data (.jsonl/.txt file or folder)")
    parser.add_argument("--name", default=os.uname().nodename, help="a name for this node (shown to staff)")
    parser.add_argument("--model", help="local base-model checkpoint (default: the path the campaign names)")
    parser.add_argument("--port", type=int, default=0, help="local port for the SuperNode's app runtime")
    parser.add_argument("--home", default=".bayanihan-node", help="folder for this node's Flower state")
    parser.add_argument(
        "--attack",
        choices=MODES,
        help=argparse.SUPPRESS,  # test/benchmark harness only: deliberately absent from --help
    )
    parser.set_defaults(func=run)
