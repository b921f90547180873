"""`python -m testbed.hostile_node --attack MODE <node's flags>`: a real SuperNode that sends hostile updates.

For tests and benchmarks of the server's defences only. It is `python -m federation node` (same data check, same
SuperNode command and environment) with one difference: the node-private `flwr-clientapp` it puts first on the
SuperNode's PATH runs testbed.hostile_runtime, which runs the installed ClientApp and then turns its reply hostile
(testbed.attack). Contributors' installs have neither this module nor any switch that does the same.

Where the SuperNode's environment names a warm worker (BAYANIHAN_WARM_SOCKET, as bench/flower_cluster.py sets it),
the honest part of each round runs there, as on an honest node; without one the node runs cold.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from federation import procs
from federation.cli import node
from testbed.attack import MODES
from testbed.hostile_runtime import ATTACK_ENV

REPO = Path(__file__).resolve().parent.parent

ATTACK_HELP = {
    "nan": "a NaN in the adapter",
    "wrong-shape": "a tensor of the wrong shape",
    "scale": "its update multiplied by 50",
    "sign-flip": "its update with the sign flipped",
}
assert set(ATTACK_HELP) == set(MODES), "every attack mode needs its line in the banner"

HOSTILE_WRAPPER = """#!/bin/sh
# Written by `python -m testbed.hostile_node`: a TEST node whose replies are made hostile ({mode}) after the installed
# ClientApp ran (testbed/hostile_runtime.py). Never on a contributor's machine.
PYTHONPATH={repo}${{PYTHONPATH:+:$PYTHONPATH}}
{env}={mode}
export PYTHONPATH {env}
exec {python} -m testbed.hostile_runtime "$@"
"""


def hostile_runtime_bin(home: Path, mode: str) -> Path:
    """`home`/bin (0700) with a `flwr-clientapp` that runs testbed.hostile_runtime in attack `mode`."""
    return procs.write_clientapp_script(
        home,
        HOSTILE_WRAPPER.format(
            repo=shlex.quote(str(REPO)), python=shlex.quote(sys.executable), env=ATTACK_ENV, mode=shlex.quote(mode)
        ),
    )


def warn(mode: str) -> None:
    banner = "!" * 78
    print(
        f"{banner}\n!! ATTACK MODE '{mode}': this node will send HOSTILE updates ({ATTACK_HELP[mode]}).\n"
        "!! For tests and benchmarks of the server's defences only. Never point it at a real campaign.\n"
        f"{banner}",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.hostile_node", description=__doc__.splitlines()[0])
    parser.add_argument("--attack", required=True, choices=MODES, help="what the node does to its honest update")
    node.add_arguments(parser)
    args = parser.parse_args(argv)
    warn(args.attack)
    return node.run(args, runtime_bin=lambda home: hostile_runtime_bin(home, args.attack))


if __name__ == "__main__":
    sys.exit(main())
