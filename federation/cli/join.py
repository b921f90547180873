"""`join --site URL --token TOKEN --data PATH`: enroll this machine as a node and keep it training.

1. the data is checked first (bad data: file:line errors, nothing is sent, exit 2);
2. an EC key pair is made locally (private key 0600, never sent);
3. the public key is enrolled with the site, which registers it with the SuperLink;
4. a real flower-supernode runs with TLS and that key, restarted if it drops, until Ctrl-C.
Running `join` again with the same --home resumes without a token.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import requests

from federation import pki, preflight, procs
from federation.cli.validate import check_data, print_stats
from federation.data import DataError

STATE_FILE = "node.json"


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


def status_line(code: int, body: dict, alive: bool) -> str:
    if code == 0:
        return f"site unreachable ({body.get('error', '')[:60]}); node {'running' if alive else 'restarting'}"
    link = "connected" if alive else "reconnecting"
    last = body.get("last_round")
    if not last:
        return f"{link} · waiting for the first round"
    loss = f"{last['train_loss']:.4f}" if last.get("train_loss") is not None else "n/a"
    return f"{link} · last round: {last['campaign']} round {last['round']} · train loss {loss}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM from a supervisor: same clean stop as Ctrl-C


def run(args: argparse.Namespace) -> int:
    # The SuperNode runs in its own process group; only a clean exit of `join` stops it with us.
    signal.signal(signal.SIGTERM, _interrupt)
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
    command = procs.supernode_command(state["superlink"], args.port or procs.free_port(), config, ca, key_path)
    env = procs.flower_env(home / "flwr-home")
    supervisor = procs.Supervisor(home / "logs")
    last_line = ""
    try:
        while True:
            node = supervisor.procs.get("supernode")
            if node is None or node.poll() is not None:
                if node is not None:
                    print(f"SuperNode exited with code {node.returncode}; see {home / 'logs' / 'supernode.log'}")
                    supervisor.stop("supernode")  # also ends what it left running
                code, body = heartbeat(state, {"state": "starting"})
                if code == 403:
                    print(
                        f"this node is no longer admitted: {body.get('reason') or body.get('status')}", file=sys.stderr
                    )
                    return 3
                if node is not None:
                    time.sleep(args.retry_seconds)  # the SuperLink may be restarting: try again shortly
                supervisor.start("supernode", command, env=env, cwd=home)
            code, body = heartbeat(state, {"state": "running", "supernode": "alive"})
            if code == 403:
                supervisor.stop_all()
                print(f"this node is no longer admitted: {body.get('reason') or body.get('status')}", file=sys.stderr)
                return 3
            line = status_line(code, body, alive=supervisor.procs["supernode"].poll() is None)
            if line != last_line:
                print(time.strftime("%H:%M:%S"), line, flush=True)
                last_line = line
            time.sleep(args.interval)
    except KeyboardInterrupt:
        print("stopping the node")
        return 0
    finally:
        supervisor.stop_all(timeout=8)


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
    preflight.add_arguments(parser)
    parser.set_defaults(func=run)
