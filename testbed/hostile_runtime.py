"""A hostile node's `flwr-clientapp`: the installed runtime and ClientApp, then the reply turned hostile.

`python -m testbed.hostile_node` puts a `flwr-clientapp` first on its SuperNode's PATH that runs this module with
BAYANIHAN_ATTACK=MODE (testbed.attack.MODES). Everything up to the reply is the real node: federation.node_runtime
pulls the task, checks the FAB, heartbeats, and runs the installed ClientApp (here, cold; in the node's warm worker
when BAYANIHAN_WARM_SOCKET names one). Only then is the reply changed: its packed adapter is unpacked, passed through
testbed.attack.apply_attack with the global adapter the instruction carried, and packed again in the same wire dtype.
The server therefore meets exactly what a broken or malicious node on the real wire would send.

The production ClientApp knows nothing of this (it has no attack hook): the change happens outside it, in a process
only this checkout-only package can start.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from federation import node_runtime
from federation.packing import ARRAYS_KEY, LAYOUT_KEY, Layout, pack_records, unpack_content
from testbed.attack import MODES

ATTACK_ENV = "BAYANIHAN_ATTACK"


def _shapes(content: Any) -> dict[str, tuple[int, ...]]:
    """Names and shapes as the message's own layout states them (unpack_content still checks the array against it)."""
    layout = Layout.from_record(content[LAYOUT_KEY])
    return dict(zip(layout.names, layout.shapes, strict=True))


def turn_hostile(mode: str, message: Any, reply: Any) -> Any:
    """`reply` with its packed adapter replaced by apply_attack's version; error replies pass through unchanged."""
    import torch
    from flwr.app import RecordDict

    from testbed.attack import apply_attack

    if reply.has_error():
        return reply
    dtype = Layout.from_record(reply.content[LAYOUT_KEY]).dtype
    trained, received = (
        {k: torch.from_numpy(v) for k, v in unpack_content(m.content, _shapes(m.content), dtype).items()}
        for m in (reply, message)
    )
    hostile = apply_attack(mode, trained, received)
    arrays, layout = pack_records({k: v.numpy() for k, v in hostile.items()}, dtype)
    # A fresh RecordDict: the reply's other records (metrics, node) as they were, the packed adapter replaced.
    content = RecordDict({k: v for k, v in reply.content.items() if k not in (ARRAYS_KEY, LAYOUT_KEY)})
    content[ARRAYS_KEY], content[LAYOUT_KEY] = arrays, layout
    reply.content = content
    return reply


def main(argv: list[str] | None = None) -> None:
    mode = os.environ.get(ATTACK_ENV, "")
    if mode not in MODES:
        print(f"testbed.hostile_runtime: {ATTACK_ENV}={mode!r} is not one of {', '.join(MODES)}", file=sys.stderr)
        sys.exit(2)
    honest = node_runtime.run_job

    def run_job(message: Any, context: Any) -> Any:
        from logging import WARNING

        from flwr.supercore import log

        reply = turn_hostile(mode, message, honest(message, context))
        log(WARNING, "ATTACK MODE %r: this reply was made hostile (testbed.hostile_runtime)", mode)
        return reply

    # node_runtime.main looks run_job up in its module at call time: this process runs the wrapped one.
    node_runtime.run_job = run_job
    node_runtime.main(argv)


if __name__ == "__main__":
    main()
