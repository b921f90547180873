"""`join` brings back a SuperNode the SuperLink lost, and never says "connected" while the SuperLink
does not see it.

Two breaks: (1) the SuperLink restarts with fresh state (as with `--database :flwr-in-memory:`) and the platform
re-registers the admitted keys — Flower 1.42's SuperNode then gets 401 and exits by itself (seen here), so `join`
restarts an exited process; (2) a SuperNode that is alive but silent (SIGSTOP: no heartbeats, as when its
heartbeat thread or fleet loop died) — only the site's answer (what the SuperLink sees) can tell.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime

import psutil
import pytest

from community.models import Node
from federation import control

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NAMES = ("node-1", "node-2")


def supernode_of(stack, name: str) -> psutil.Process | None:
    join = psutil.Process(stack.supervisor.pid(f"node-{name}"))
    found = [p for p in join.children(recursive=True) if "flower-supernode" in " ".join(p.cmdline())]
    return found[0] if found else None


def online(ctl) -> set[int]:
    try:
        return control.online_node_ids(ctl)
    except Exception:  # noqa: BLE001 - the SuperLink is restarting
        return set()


def wait_for(what: str, check, timeout: float, stack) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        stack.check()
        time.sleep(1)
    return time.time()


def reregister_admitted_keys(ctl) -> None:
    """What the platform does after a SuperLink start (topology's key sync): register every active key again."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    for node in Node.objects.filter(status=Node.Status.ACTIVE):
        try:
            response = ctl.RegisterNode(RegisterNodeRequest(public_key=node.public_key.encode(), name=node.name))
        except Exception:  # noqa: BLE001 - already registered by the platform's own key sync at SuperLink start
            continue
        node.flwr_node_id = str(response.node_id)
        node.save(update_fields=["flwr_node_id"])


def status_lines(log: str) -> list[tuple[float, str]]:
    today = datetime.now().strftime("%Y-%m-%d")
    out = []
    for line in log.splitlines():
        if m := re.match(r"(\d\d:\d\d:\d\d) (.*)", line):
            out.append((datetime.strptime(f"{today} {m.group(1)}", "%Y-%m-%d %H:%M:%S").timestamp(), m.group(2)))
    return out


def test_join_restarts_a_supernode_the_superlink_lost_and_never_claims_connected_meanwhile(
    live_platform, settings, tmp_path
):
    settings.SUPERLINK_PRESENCE_CACHE_SECONDS = 2  # the heartbeat answer follows ListNodes closely
    settings.HEARTBEATS_PER_MINUTE = 120  # join beats every 2 s here (--interval 2), plus one per restart
    stack = live_platform.stack
    ctl = control.client(live_platform.superlink, settings.SUPERLINK_ROOT_CERT)
    ids = lambda: {int(n.flwr_node_id) for n in Node.objects.all()}  # noqa: E731
    # The nodes enroll themselves (join) after the fixture starts them: wait for both rows, then both online.
    wait_for("both nodes online", lambda: len(ids()) == len(NAMES) and ids() <= online(ctl), 120, stack)
    before = {name: supernode_of(stack, name) for name in NAMES}
    logs = {name: stack.supervisor.log_dir / f"node-{name}.log" for name in NAMES}
    wait_for("join to say connected", lambda: all("connected" in p.read_text() for p in logs.values()), 60, stack)

    # Break the link: a fresh SuperLink (no state) on the same address, keys re-registered by the platform.
    broken_at = time.time()
    stack.supervisor.stop("superlink", timeout=5)
    for db in (stack.state_dir / "superlink").glob("superlink.db*"):
        db.unlink()
    stack.start_superlink(live_platform.superlink)
    reregister_admitted_keys(ctl)
    assert all(proc is not None for proc in before.values())
    # When the SuperLink sees each node again (polled every second).
    node_ids = {n.name: int(n.flwr_node_id) for n in Node.objects.all()}
    back_at: dict[str, float] = {}
    deadline = time.monotonic() + 240
    while len(back_at) < len(NAMES):
        assert time.monotonic() < deadline, f"only {sorted(back_at)} came back online within 240s"
        stack.check()
        seen = online(ctl)
        back_at |= {name: time.time() for name in NAMES if name not in back_at and node_ids[name] in seen}
        time.sleep(1)
    took = {name: round(t - broken_at) for name, t in back_at.items()}
    print(f"back online after the SuperLink lost them (s): {took}")
    assert max(took.values()) <= 150
    for name in NAMES:
        text = logs[name].read_text()
        after = [(t, line) for t, line in status_lines(text) if t >= int(broken_at) + 3]
        assert any(line.startswith(("restarting the SuperNode", "SuperNode exited")) for _, line in after), text
        # Never "connected" between the break and the moment the SuperLink saw it again (1 s log resolution).
        lying = [line for t, line in after if line.startswith("connected") and t < int(back_at[name]) - 1]
        assert not lying, f"{name} claimed connected while offline: {lying}\n{text[-3000:]}"
        assert supernode_of(stack, name).pid != before[name].pid and not before[name].is_running()
    # The nodes are usable again: join says connected.
    wait_for(
        "join to say connected again",
        lambda: all(line.startswith("connected") for n in NAMES for _, line in status_lines(logs[n].read_text())[-1:]),
        30,
        stack,
    )


def test_join_restarts_a_supernode_that_is_alive_but_silent(live_platform, settings):
    settings.SUPERLINK_PRESENCE_CACHE_SECONDS = 2
    settings.HEARTBEATS_PER_MINUTE = 120
    stack = live_platform.stack
    ctl = control.client(live_platform.superlink, settings.SUPERLINK_ROOT_CERT)
    ids = lambda: {int(n.flwr_node_id) for n in Node.objects.all()}  # noqa: E731
    wait_for("both nodes online", lambda: len(ids()) == len(NAMES) and ids() <= online(ctl), 120, stack)
    node_id = int(Node.objects.get(name="node-1").flwr_node_id)
    victim = supernode_of(stack, "node-1")
    log = stack.supervisor.log_dir / "node-node-1.log"
    try:
        os.kill(victim.pid, signal.SIGSTOP)  # alive (the process exists) but silent: no heartbeats, no pulls
        stopped_at = time.time()
        offline_at = wait_for("the SuperLink to see node-1 offline", lambda: node_id not in online(ctl), 120, stack)
        back_at = wait_for("node-1 online again", lambda: node_id in online(ctl), 240, stack)
    finally:
        if victim.is_running():
            victim.kill()
    offline_s, back_s = offline_at - stopped_at, back_at - stopped_at
    print(f"silent SuperNode: offline after {offline_s:.0f}s, back online after {back_s:.0f}s")
    text = log.read_text()
    assert "restarting the SuperNode: the SuperLink did not see it for" in text, text
    lying = [
        line
        for t, line in status_lines(text)
        if int(offline_at) + 3 <= t < int(back_at) - 1 and line.startswith("connected")
    ]
    assert not lying, f"claimed connected while offline: {lying}\n{text[-3000:]}"
    assert supernode_of(stack, "node-1").pid != victim.pid
    assert back_at - offline_at <= 90  # noticed and restarted within the grace (30 s) plus a stop and a start
