"""A bare Flower federation for benchmarks: one SuperLink and real `python -m federation node` SuperNodes (one of
them, if asked, a `python -m testbed.hostile_node`).

No web site and no node authentication: these benchmarks measure learning, not admission. The ServerApp journals
each round to events.jsonl in its output dir (there is no site to report to) and the benchmark reads that journal.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from federation import control, procs
from federation.config import ServerPaths
from federation.report import LOCAL_PATHS_ENV

# The ServerApp takes its paths from a file on the SuperLink host, never from the run config (every node sees that):
# SuperLinks started from here inherit this folder through the environment (procs.flower_env copies os.environ).
PATHS_DIR = Path(os.environ.setdefault(LOCAL_PATHS_ENV, tempfile.mkdtemp(prefix="bayanihan-server-paths-")))
_campaign_ids = itertools.count(1)


def server_side(run_config: dict) -> dict:
    """Move the server paths (base-model-path, heldout-path, output-dir) out of `run_config` into a paths file under
    a fresh campaign id; returns the run config to submit."""
    config = dict(run_config)
    paths = ServerPaths(config.pop("base-model-path"), config.pop("heldout-path"), config.pop("output-dir"))
    campaign_id = next(_campaign_ids)
    (PATHS_DIR / f"{campaign_id}.json").write_text(json.dumps(paths.to_json()))
    return {**config, "campaign-id": campaign_id}


def start_cluster(sup: procs.Supervisor, root: Path, data: dict[str, Path], model: Path, attack: str = "",
                  hostile: str = "", warm: bool = True) -> str:  # fmt: skip
    """SuperLink plus one node per entry of `data` (name -> data path); returns the SuperLink address.

    With `attack` (a testbed.attack mode) the node named `hostile` is a testbed.hostile_node sending that attack.

    With `warm` each node has its own warm worker and task launcher, as `join` gives a contributor: rounds start in
    milliseconds instead of loading torch and the model again (the learning is the same: warm equals cold, tested).
    """
    from federation import warm_protocol

    port = procs.free_port()
    address = f"127.0.0.1:{port}"
    link_dir = root / "superlink"
    link_dir.mkdir(parents=True, exist_ok=True)
    proc = sup.start(
        "superlink",
        procs.superlink_command(link_dir, "127.0.0.1", port),
        env=procs.flower_env(link_dir / "flwr-home"),
        cwd=link_dir,
    )
    procs.wait_http(f"http://{address}/health", 60, proc)
    for name, path in data.items():
        home = root / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        env = procs.flower_env(home / "flwr-home")
        if warm:
            worker_home = home / "warm"
            worker_home.mkdir(mode=0o700, exist_ok=True)
            worker = sup.start(f"{name}-warm", [sys.executable, "-m", "federation.warm_worker", "--home",
                                                str(worker_home), "--model", str(model), "--data", str(path)],
                               env=env, cwd=home)  # fmt: skip
            socket = warm_protocol.socket_path(worker_home)
            deadline = time.monotonic() + 120
            while not socket.exists():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name}'s warm worker did not start: {sup.tail(f'{name}-warm')}")
                time.sleep(0.2)
            env[warm_protocol.ENV_SOCKET] = str(socket)
        # The hostile node is a real SuperNode too, whose replies testbed.hostile_runtime turns hostile after the
        # installed ClientApp (in its warm worker, like the others) made them.
        runner = ["testbed.hostile_node", "--attack", attack] if attack and name == hostile else ["federation", "node"]
        command = [sys.executable, "-m", *runner, "--superlink", address, "--data", str(path), "--name", name,
                   "--model", str(model), "--home", str(home / "flwr-home")]  # fmt: skip
        sup.start(name, command, env=env, cwd=home)
    return address


def run_to_end(address: str, run_config: dict, label: str, timeout: float, check=None) -> float:
    """Submit one run through the Control API and wait for it; returns its wall time in seconds."""
    client = control.client(address)
    started = time.monotonic()
    run_id = control.start_run(client, server_side(run_config))
    while True:
        state = control.run_state(client, run_id)
        if state.finished:
            break
        if time.monotonic() - started > timeout:
            control.stop_run(client, run_id)
            raise TimeoutError(f"{label}: run {run_id} still {state.status} after {timeout:.0f}s")
        if check is not None:
            check()  # a node or the SuperLink died: stop waiting, say which
        time.sleep(1)
    if not state.succeeded:
        raise RuntimeError(f"{label}: run {run_id} ended {state.sub_status}: {state.details}")
    return time.monotonic() - started


def journal(out: Path) -> list[dict]:
    """The ServerApp's events for one run, oldest first."""
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
