"""`join --site URL --token TOKEN --data PATH`: enroll this machine as a node and keep it training.

1. the data is checked first (bad data: file:line errors, nothing is sent, exit 2);
2. an EC key pair is made locally (private key 0600, never sent);
3. the public key is enrolled with the site, which registers it with the SuperLink;
4. a real flower-supernode runs with TLS and that key until Ctrl-C, restarted when it exits or when it is alive but
   no longer connected (federation.node_watch: what the SuperLink sees, via the site, and the SuperNode's log);
5. that SuperNode runs only the ClientApp this installed `federation` ships (federation.node_runtime): our own
   `flwr-clientapp` comes first on its PATH, and an app the platform did not ship is refused;
6. beside it runs the node's warm worker (federation.warm_worker; off with --no-warm): the per-message
   `flwr-clientapp` hands each job to it, so torch, the model and the tokenized data load once per node, not once
   per round. It is restarted whenever it exits (including when the node's code changed under it). A host running
   many nodes may share one worker instead (`--warm-worker SOCKET`, federation.warm_worker says how).
Running `join` again with the same --home resumes without a token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from federation import node_runtime, node_watch, pki, preflight, procs, warm_protocol
from federation.cli.validate import check_data, print_stats
from federation.data import DataError

STATE_FILE = "node.json"
WARM_WORKER = "warm-worker"  # the Supervisor's name for it; its log is logs/warm-worker.log


class JoinError(Exception):
    """A problem the user can act on; printed without a traceback."""


def enroll(site: str, token: str, public_pem: bytes, name: str, home: Path) -> dict:
    try:
        response = requests.post(
            f"{site}/api/v1/nodes/enroll",
            json={"token": token, "public_key": public_pem.decode(), "name": name},
            timeout=60,
        )
    except requests.RequestException as exc:
        raise JoinError(f"cannot reach {site}: {exc}") from None
    if response.status_code != 201:
        try:
            reason = response.json().get("error", response.text)
        except ValueError:
            reason = response.text[:200]
        raise JoinError(f"enrollment refused ({response.status_code}): {reason}")
    body = response.json()
    (home / "ca.crt").write_text(body["ca_certificate"])
    state = {k: body[k] for k in ("node_id", "pseudonym", "api_token", "superlink")} | {"site": site, "name": name}
    pki.write_private(home / STATE_FILE, json.dumps(state, indent=2).encode())  # holds the node's API token
    return state


def heartbeat(state: dict, report: dict) -> tuple[int, dict]:
    try:
        response = requests.post(
            f"{state['site']}/api/v1/nodes/heartbeat",
            json=report,
            headers={"Authorization": f"Bearer {state['api_token']}"},
            timeout=10,
        )
        return response.status_code, response.json()
    except (requests.RequestException, ValueError) as exc:
        return 0, {"error": str(exc)}


def run(args: argparse.Namespace) -> int:
    # The SuperNode runs in its own process group: a clean exit of `join` stops it, and so does the kernel
    # (PR_SET_PDEATHSIG, procs.Supervisor) if `join` is killed.
    procs.interrupt_on_signals()  # SIGTERM from a supervisor: the same clean stop as Ctrl-C
    shared: Path | None = None
    if args.warm_worker:  # before anything is sent: a wrong socket is the user's to fix, not a round's failure
        try:
            if not args.warm:
                raise JoinError("--warm-worker and --no-warm contradict each other: give one")
            shared = shared_worker_socket(args.warm_worker)
        except JoinError as err:
            print(f"join: {err}", file=sys.stderr)
            return 2
    data = str(Path(args.data).resolve())
    try:
        print_stats(data, check_data(data))
    except DataError as err:
        print(f"{data}: the data has problems; nothing was sent and the node will not join:\n{err}", file=sys.stderr)
        return 2
    if not preflight.passed(args):  # model, disk, memory: what a round will need, before a token is spent
        return 2
    home = Path(args.home).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)  # keys, the node API token and logs: private to the contributor
    key_path, public_pem = pki.ensure_node_key(home)
    try:
        state = _load_or_enroll(args, home, public_pem)
    except JoinError as err:
        print(f"join: {err}", file=sys.stderr)
        return 1
    ca = home / "ca.crt"
    print(f"node {state['pseudonym']} (Flower node id {state['node_id']}) → SuperLink {state['superlink']}")
    print(f"trusting SuperLink CA sha256 {pki.certificate_fingerprint(ca.read_bytes())}", flush=True)

    config: dict[str, str | int | float] = {"data-path": data, "name": state["name"]}
    if args.model:
        config["model-path"] = str(Path(args.model).resolve())
    try:
        node_runtime.self_test_elsewhere()  # fail now, not at every round, if Flower's internals changed
    except node_runtime.InternalsChanged as err:
        print(f"join: {err}", file=sys.stderr)
        return 1
    command = supernode_commands(state["superlink"], args.port, config, ca, key_path)
    env = procs.flower_env(home / "flwr-home", node_bin=procs.node_runtime_bin(home))
    warm: tuple[list[str], dict[str, str]] | None = None
    if shared is not None:
        env[warm_protocol.ENV_SOCKET] = str(shared)  # rounds go to that worker; this join supervises none
        print(f"rounds run in the shared warm worker at {shared}", flush=True)
    elif args.warm:
        warm = (warm_worker_command(home, data, config.get("model-path")), procs.flower_env(home / "flwr-home"))
        env[warm_protocol.ENV_SOCKET] = str(warm_protocol.socket_path(home))  # every flwr-clientapp inherits it
    supervisor = procs.Supervisor(home / "logs")
    try:
        return _supervise(args, state, home, supervisor, command, env, warm)
    except KeyboardInterrupt:
        print("stopping the node")
        return 0
    finally:
        supervisor.stop_all(timeout=8)


def _say(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, flush=True)


def shared_worker_socket(value: str) -> Path:
    """The socket of a warm worker another process runs for several nodes (`--warm-worker`). Its folder must be
    ours and private: whoever can create a socket there would receive this node's rounds (its data's updates)."""
    path = Path(value).expanduser().absolute()
    folder = path.parent
    try:
        info = folder.stat()
    except OSError as exc:
        raise JoinError(f"--warm-worker {value}: its folder {folder} cannot be read ({exc.strerror})") from exc
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise JoinError(
            f"--warm-worker {value}: its folder {folder} must be yours and private (chmod 700), it is mode "
            f"{info.st_mode & 0o777:o} owned by uid {info.st_uid}"
        )
    if path.exists() and not path.is_socket():
        raise JoinError(f"--warm-worker {value}: that is not a socket (start `python -m federation.warm_worker "
                        f"--home {folder}` and give its warm.sock)")  # fmt: skip
    return path


def supernode_commands(superlink: str, port: int, config: dict, ca: Path, key_path: Path) -> Callable[[], list[str]]:
    """The SuperNode's command for each (re)start. With `--port 0` every start gets a port free at that moment:
    a port picked once and kept could be taken by another program while the SuperNode was down, and every restart
    would then fail the same way ("address already in use")."""

    def command() -> list[str]:
        return procs.supernode_command(superlink, port or procs.free_port(), config, ca, key_path)

    return command


def warm_worker_command(home: Path, data: str, model: object = None) -> list[str]:
    command = [sys.executable, "-m", "federation.warm_worker", "--home", str(home), "--data", data]
    return command + (["--model", str(model)] if model else [])


def keep_warm_worker(supervisor: procs.Supervisor, command: list[str], env: dict[str, str], home: Path) -> str | None:
    """Start the warm worker unless it runs; returns what to tell the user when it had exited (None otherwise).

    Its children die with `join` (procs.Supervisor: own process group, PR_SET_PDEATHSIG). A shim that finds no
    worker waits for it a while (warm_protocol.ENV_CONNECT_WAIT), so a restart between rounds costs no round.
    """
    from federation.warm_worker import EXIT_STALE

    if supervisor.running(WARM_WORKER):
        return None
    line = None
    code = supervisor.returncode(WARM_WORKER)
    if code is not None:
        why = " (the node's code changed: starting it on the new code)" if code == EXIT_STALE else ""
        line = (f"warm worker exited with code {code}{why}; restarting it "
                f"(log: {home / 'logs' / (WARM_WORKER + '.log')})")  # fmt: skip
        supervisor.stop(WARM_WORKER)
    supervisor.start(WARM_WORKER, command, env=env, cwd=home)
    return line


def _supervise(
    args: argparse.Namespace,
    state: dict,
    home: Path,
    supervisor: procs.Supervisor,
    command: Callable[[], list[str]],
    env: dict[str, str],
    warm: tuple[list[str], dict[str, str]] | None = None,
) -> int:
    """Keep one SuperNode connected: restart it when it exits or when it is alive but gone (node_watch); keep the
    warm worker (`warm`: its command and env) running beside it."""
    watch = node_watch.Watch(retry_seconds=args.retry_seconds, offline_grace=args.offline_restart_seconds)
    log = node_watch.LogTail(home / "logs" / "supernode.log")
    log.skip_to_end()  # lines of an earlier session say nothing about this one
    next_start = time.monotonic()
    down_noticed = False
    last_line = ""
    while True:
        if warm is not None and (restarted := keep_warm_worker(supervisor, *warm, home)):
            _say(restarted)
        alive = supervisor.running("supernode")
        if not alive and time.monotonic() >= next_start:
            code, body = heartbeat(state, {"state": "starting"})
            if code == 403:
                print(f"this node is no longer admitted: {body.get('reason') or body.get('status')}", file=sys.stderr)
                return 3
            supervisor.stop("supernode")  # reaps the old one and what it left running
            supervisor.start("supernode", command(), env=env, cwd=home)
            watch.started(time.monotonic())
            alive, down_noticed = True, False
            next_start = math.inf  # the next start is decided by the watch once this one ends
        signs = node_watch.read_signs(log.read())
        for reason in signs.refusals:
            _say(node_watch.REFUSAL_LINE + reason)
        code, body = heartbeat(state, {"state": "running", "supernode": "alive" if alive else "restarting"})
        if code == 403:
            supervisor.stop_all()
            print(f"this node is no longer admitted: {body.get('reason') or body.get('status')}", file=sys.stderr)
            return 3
        now = time.monotonic()
        if alive or not down_noticed:
            verdict = watch.observe(now, alive, code, body, signs)
            line = verdict.line
            if verdict.restart:
                if alive:
                    _say(f"restarting the SuperNode: {watch.reason}")
                    supervisor.stop("supernode")
                else:
                    exited = supervisor.returncode("supernode")
                    _say(f"SuperNode exited with code {'?' if exited is None else exited}; see {log.path}")
                next_start, down_noticed = now + verdict.start_in, True
        else:
            wait = max(0.0, next_start - now)
            state_text = f"reconnecting · {watch.reason}; next try in {wait:.0f}s"
            line = node_watch.status_line(code, body, "unknown", state_text)
        if alive and (doing := node_watch.training_now(home, supervisor.pid("supernode"))):
            line = f"{line} · {doing}"
        # The countdown changes every tick: print when the state (not the seconds) changes.
        key = line.split("; next try in")[0]
        if key != last_line:
            _say(line)
            last_line = key
        time.sleep(args.interval)


def _load_or_enroll(args: argparse.Namespace, home: Path, public_pem: bytes) -> dict:
    state_path = home / STATE_FILE
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if args.site and args.site.rstrip("/") != state["site"]:
            raise JoinError(f"{home} is enrolled with {state['site']}; use another --home for {args.site}")
        return state
    if not args.token:
        raise JoinError("first run needs --token: create one on your contributor page")
    if not args.site:
        raise JoinError("first run needs --site URL")
    return enroll(args.site.rstrip("/"), args.token, public_pem, args.name, home)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("join", help="enroll this machine as a contributor node and keep it training")
    parser.add_argument("--site", help="the Bayanihan site, e.g. https://bayanihan.example.org")
    parser.add_argument("--token", help="enrollment token from your contributor page (first run only)")
    parser.add_argument("--data", required=True, help="your local training data (.jsonl/.txt file or folder)")
    parser.add_argument("--name", default=os.uname().nodename, help="a name for this node (shown to you and staff)")
    parser.add_argument("--model", help="local base-model checkpoint folder")
    parser.add_argument("--home", default="~/.bayanihan/node", help="keys and state of this node (keep it private)")
    parser.add_argument("--port", type=int, default=0, help="local port for the SuperNode's app runtime")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between status updates")
    parser.add_argument("--retry-seconds", type=float, default=5.0, help="wait before restarting a dropped SuperNode")
    parser.add_argument(
        "--offline-restart-seconds",
        type=float,
        default=30.0,
        help="restart a running SuperNode the SuperLink has not seen online for this long (doubles while it fails)",
    )
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="no warm worker: every round starts torch and loads the model afresh (slower; uses less idle memory)",
    )
    parser.add_argument(
        "--warm-worker",
        metavar="SOCKET",
        help="use the warm worker already serving at SOCKET (one `python -m federation.warm_worker` shared by the "
        "nodes of this host; it trains one job at a time) instead of starting one for this node",
    )
    preflight.add_arguments(parser)
    parser.set_defaults(func=run)
