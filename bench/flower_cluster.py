"""A bare Flower federation for benchmarks: one SuperLink and real `python -m federation node` SuperNodes.

No web site and no node authentication: these benchmarks measure learning, not admission. The ServerApp journals
each round to events.jsonl in its output dir (its report URL is empty) and the benchmark reads that journal.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from federation import control, procs  # noqa: E402


def start_cluster(sup: procs.Supervisor, root: Path, data: dict[str, Path], model: Path, attack: str = "",
                  hostile: str = "") -> str:  # fmt: skip
    """SuperLink plus one node per entry of `data` (name -> data path); returns the SuperLink address."""
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
        command = [sys.executable, "-m", "federation", "node", "--superlink", address, "--data", str(path),
                   "--name", name, "--model", str(model), "--home", str(home / "flwr-home")]  # fmt: skip
        if attack and name == hostile:
            command += ["--attack", attack]
        sup.start(name, command, env=procs.flower_env(home / "flwr-home"), cwd=home)
    return address


def run_to_end(address: str, run_config: dict, label: str, timeout: float, check=None) -> float:
    """Submit one run through the Control API and wait for it; returns its wall time in seconds."""
    client = control.client(address)
    started = time.monotonic()
    run_id = control.start_run(client, run_config)
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
