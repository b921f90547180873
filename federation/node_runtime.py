"""A node's own `flwr-clientapp`: it runs the INSTALLED Bayanihan ClientApp, never app code from the wire.

Why this exists: Flower's SuperNode executes whatever app a run ships in its FAB — anyone
who can start a run can run code on every contributor's machine and read their data. Flower's own guard,
`flower-supernode --trusted-entities`, only accepts apps whose verification carries `valid_license`, which the
open-source SuperLink sets only for apps fetched from Flower Hub; a self-submitted app can never pass it.

So a node agrees to exactly one app: the `federation/flwr_app` shipped with the `federation` version it has
installed. `join` (and `node`) put a node-private `bin/` first on the SuperNode's PATH holding a `flwr-clientapp`
that runs `python -m federation.node_runtime <the same arguments>` (Flower 1.42's SuperExec launches the bare name
`flwr-clientapp` through PATH: `supercore/superexec/executor/subprocess_executor.py` with
`supercore/constant.py:TASK_TYPE_TO_COMMAND`). This module then does what `flwr-clientapp` does — pull the task,
heartbeat it, push the reply and the task output, exit with Flower's exit codes — except that instead of
`install_from_fab` + loading the FAB's `clientapp` it checks the FAB against the installed app files (fab id and
the sha256 of every file) and, only if they match, calls the installed `federation` ClientApp in this process.
Any other app gets an Error reply (`app refused: ...`, Flower's INVALID_FAB code) and a log line `join` shows.
Under `join` the ClientApp does not run in this process but in the node's warm worker (`run_job`,
federation.warm_worker): this process then imports no torch and only waits for the reply, heartbeating the task.
Every message pays this process's start-up, so it keeps its imports light (50 nodes on one small machine
start at once and must heartbeat within Flower's claim deadline): it reads its command line with its own copy of
Flower's `flwr-clientapp` parser (`cli_parser`) rather than importing Flower's SuperNode CLI.

Flower has no public hook for this, so the runtime plumbing comes from Flower 1.42 internals
(`flwr.supernode.runtime.run_clientapp` and friends). flwr is pinned to 1.42.0; `self_test()` checks at start-up
that every internal used here still exists with the expected signature and fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import io
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

FLWR_VERSION = "1.42.0"
REFUSED_PREFIX = "app refused: "  # `join` looks for this in the SuperNode's log
MANIFEST = ".info/CONTENT"  # Flower's own per-file hash list inside a FAB; we compute hashes ourselves

# Internal names this module relies on, with the parameters it passes (checked by self_test).
_INTERNALS: dict[str, tuple[str, tuple[str, ...]]] = {
    "run_clientapp.pull_task_input": ("flwr.supernode.runtime.run_clientapp:pull_task_input", ("client",)),
    "run_clientapp.push_message": (
        "flwr.supernode.runtime.run_clientapp:push_message", ("client", "message", "context")
    ),
    "run_clientapp.push_task_output": (
        "flwr.supernode.runtime.run_clientapp:push_task_output", ("client", "context", "sub_status", "details")
    ),
    "RuntimeHttpClient.from_server_address": (
        "flwr.supercore.runtime:RuntimeHttpClient.from_server_address",
        ("server_address", "insecure", "root_certificates", "interceptors", "retry_invoker"),
    ),
    "HeartbeatSender": ("flwr.supercore.heartbeat:HeartbeatSender", ()),
    "make_task_heartbeat_fn_http": ("flwr.supercore.heartbeat:make_task_heartbeat_fn_http", ("client",)),
    "make_simple_http_retry_invoker": ("flwr.supercore.retry:make_simple_http_retry_invoker", ()),
    "register_signal_handlers": (
        "flwr.supercore.exit:register_signal_handlers", ("event_type", "exit_message", "exit_handlers")
    ),
    "flwr_exit": ("flwr.supercore.exit:flwr_exit", ("code", "event_type")),
    "start_parent_process_monitor": ("flwr.supercore.app_utils:start_parent_process_monitor", ("parent_pid",)),
    # Our own copy of Flower's flwr-clientapp command line (cli_parser) reads these defaults from Flower.
    "SUPERNODE_DEFAULT_CLIENT_ADDRESS": ("flwr.supercore.constant:SUPERNODE_DEFAULT_CLIENT_ADDRESS", ()),
    "RUNTIME_DEPENDENCY_INSTALL": ("flwr.common.constant:RUNTIME_DEPENDENCY_INSTALL", ()),
    "try_obtain_flwr_app_token": ("flwr.common.args:try_obtain_flwr_app_token", ("args",)),
    "validate_and_resolve_root_certificates": (
        "flwr.supercore.tls:validate_and_resolve_root_certificates", ()
    ),
    "RuntimeTokenHttpInterceptor": ("flwr.supercore.interceptors:RuntimeTokenHttpInterceptor", ()),
    "RuntimeVersionHttpInterceptor": ("flwr.supercore.interceptors:RuntimeVersionHttpInterceptor", ()),
    "RuntimeTracingInterceptor": ("flwr.supercore.runtime.tracing:RuntimeTracingInterceptor", ()),
    "TASK_TYPE_TO_COMMAND": ("flwr.supercore.constant:TASK_TYPE_TO_COMMAND", ()),
    # The warm worker's channel (federation.warm_protocol) carries Message and Context in Flower's own serde.
    "serde.message_to_proto": ("flwr.common.serde:message_to_proto", ("message",)),
    "serde.message_from_proto": ("flwr.common.serde:message_from_proto", ("message_proto",)),
    "serde.context_to_proto": ("flwr.common.serde:context_to_proto", ("context",)),
    "serde.context_from_proto": ("flwr.common.serde:context_from_proto", ("context_proto",)),
    "message_pb2.Message": ("flwr.proto.message_pb2:Message", ()),
    "message_pb2.Context": ("flwr.proto.message_pb2:Context", ()),
}  # fmt: skip

# Flower's own flwr-clientapp parser: the reference cli_parser must match (self_test(compare_cli=True)). Importing
# it imports Flower's whole SuperNode package (SQL object store, alembic, uvicorn), so never on the per-message path.
FLOWER_CLI_PARSER = "flwr.supernode.cli.flwr_clientapp:_parse_args_run_flwr_clientapp"


class InternalsChanged(RuntimeError):
    """Flower's internals are not what this module was written against."""


class AppRefused(Exception):
    """The FAB is not the app this installed `federation` ships; `str()` is the reason."""


def _resolve(target: str) -> Any:
    import importlib

    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def self_test(*, compare_cli: bool = True) -> None:
    """Raise InternalsChanged naming every Flower internal that moved, vanished or changed its parameters.

    `compare_cli` also checks that cli_parser() defines exactly the flags of Flower's own flwr-clientapp parser.
    `join` runs the full check at start-up; main() (once per message) skips that part, because building Flower's
    parser costs about 0.5 CPU-s of imports (see cli_parser).
    """
    import flwr

    problems = []
    for label, (target, params) in _INTERNALS.items():
        try:
            obj = _resolve(target)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{label} ({target}) is missing: {exc}")
            continue
        if params:
            have = set(inspect.signature(obj).parameters)
            missing = [p for p in params if p not in have]
            if missing:
                problems.append(f"{label} ({target}) lost parameter(s) {', '.join(missing)}")
    if not problems:
        from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType

        if TASK_TYPE_TO_COMMAND.get(TaskType.CLIENT_APP) != "flwr-clientapp":
            problems.append("SuperExec no longer launches `flwr-clientapp` for ClientApp tasks")
    if compare_cli:
        try:
            flowers = _resolve(FLOWER_CLI_PARSER)()
        except (ImportError, AttributeError) as exc:
            problems.append(f"flwr-clientapp arguments ({FLOWER_CLI_PARSER}) are missing: {exc}")
        else:
            problems += [f"flwr-clientapp arguments: {d}" for d in cli_differences(cli_parser(), flowers)]
    if problems:
        raise InternalsChanged(
            f"federation.node_runtime was written against flwr {FLWR_VERSION} internals (no public hook exists "
            f"to run only the installed app), but the installed flwr {getattr(flwr, '__version__', '?')} differs:\n  "
            + "\n  ".join(problems)
            + f"\nInstall flwr=={FLWR_VERSION} (requirements.txt) or update federation/node_runtime.py."
        )


def self_test_elsewhere(timeout: float = 300.0) -> None:
    """self_test() in a child process: `join` runs for days, and importing every internal (Flower's SuperNode CLI,
    its SQL store) would keep ~65 MiB in it for nothing. Raises InternalsChanged with the child's account."""
    import subprocess

    code = "from federation.node_runtime import self_test; self_test()"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise InternalsChanged(f"the check of Flower's internals did not finish within {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        marker = "federation.node_runtime.InternalsChanged: "
        start = next((i for i, line in enumerate(lines) if line.startswith(marker)), max(len(lines) - 12, 0))
        raise InternalsChanged("\n".join(lines[start:]).removeprefix(marker))


# --- The command line SuperExec gives flwr-clientapp ---------------------------------------------------------------


def cli_parser() -> argparse.ArgumentParser:
    """Flower 1.42's `flwr-clientapp` command line (flwr/supernode/cli/flwr_clientapp.py), flag for flag.

    A copy rather than Flower's `_parse_args_run_flwr_clientapp`: importing that module imports Flower's whole
    SuperNode package (SQL object store, alembic, uvicorn), about 0.5 of the shim's 1.4 CPU-s per message, which
    50 nodes on one small machine pay at once. self_test(compare_cli=True) — run by `join` at
    start-up — and the tests fail if Flower's parser and this one ever differ in a flag, default or type.
    """
    from flwr.common.constant import RUNTIME_DEPENDENCY_INSTALL
    from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS

    parser = argparse.ArgumentParser(description="Run the installed Bayanihan ClientApp (as `flwr-clientapp`)")
    parser.add_argument(
        "--runtime-api-address", dest="runtime_api_address", default=SUPERNODE_DEFAULT_CLIENT_ADDRESS, type=str,
        help=f"Address of SuperNode's Runtime API (default {SUPERNODE_DEFAULT_CLIENT_ADDRESS}).",
    )  # fmt: skip
    token = parser.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", type=str, help="Unique token generated by the Runtime API for this task")
    token.add_argument("--token-file", type=str, help="Path to a file containing that token")
    parser.add_argument("--insecure", action="store_true", help="Talk to the Runtime API without TLS.")
    parser.add_argument(
        "--root-certificates", metavar="ROOT_CERT", type=str, help="PEM root CA certificate(s) to verify it with."
    )
    parser.add_argument(
        "--parent-pid", type=int, default=None, help="Exit when the process with this PID (the SuperExec) exits."
    )
    parser.add_argument(
        "--allow-runtime-dependency-installation", action="store_true", dest="runtime_dependency_install",
        default=RUNTIME_DEPENDENCY_INSTALL, help="Accepted and ignored: this runtime never installs anything.",
    )  # fmt: skip
    return parser


def cli_differences(ours: argparse.ArgumentParser, flowers: argparse.ArgumentParser) -> list[str]:
    """How two parsers differ in what they accept and how they read it (help texts aside), one line each."""

    def actions(parser: argparse.ArgumentParser) -> dict[str, tuple[Any, ...]]:
        return {
            "/".join(a.option_strings) or a.dest: (
                type(a).__name__, a.dest, a.nargs, a.const, a.default, a.type, a.required, a.choices
            )
            for a in parser._actions  # noqa: SLF001 - argparse has no public list of its actions
        }  # fmt: skip

    def exclusive(parser: argparse.ArgumentParser) -> set[tuple[Any, ...]]:
        return {
            (tuple(sorted(o for a in g._group_actions for o in a.option_strings)), g.required)  # noqa: SLF001
            for g in parser._mutually_exclusive_groups  # noqa: SLF001
        }

    mine, theirs = actions(ours), actions(flowers)
    out = [f"Flower's {flag} is missing here" for flag in sorted(theirs.keys() - mine.keys())]
    out += [f"{flag} is not in Flower's parser" for flag in sorted(mine.keys() - theirs.keys())]
    out += [f"{flag} reads differently: ours {mine[flag]}, Flower's {theirs[flag]}"
            for flag in sorted(mine.keys() & theirs.keys()) if mine[flag] != theirs[flag]]  # fmt: skip
    if exclusive(ours) != exclusive(flowers):
        out.append(f"mutually exclusive flags differ: ours {exclusive(ours)}, Flower's {exclusive(flowers)}")
    return out


# --- The app this node agrees to run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShippedApp:
    fab_id: str  # "publisher/name", as Flower derives it from the FAB's pyproject.toml
    files: dict[str, str]  # path inside the FAB -> sha256 of its bytes


@lru_cache(maxsize=1)
def shipped_app() -> ShippedApp:
    """The FAB the platform builds from this installed `federation` (same builder), as file hashes."""
    from federation.control import APP_DIR, build_fab

    files = fab_file_hashes(build_fab(APP_DIR).content)
    project = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    return ShippedApp(f"{project['tool']['flwr']['app']['publisher']}/{project['project']['name']}", files)


def fab_file_hashes(content: bytes) -> dict[str, str]:
    """sha256 of every file in a FAB (zip), ignoring Flower's manifest (it only restates these hashes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            return {
                info.filename: hashlib.sha256(fab.read(info)).hexdigest()
                for info in fab.infolist()
                if not info.is_dir() and info.filename != MANIFEST
            }
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise AppRefused(f"the FAB is not a readable zip archive ({exc})") from None


def check_fab(*, fab_id: str, fab_hash: str, content: bytes, shipped: ShippedApp | None = None) -> None:
    """Raise AppRefused unless the FAB is exactly the app this installed `federation` ships."""
    shipped = shipped or shipped_app()
    if fab_id != shipped.fab_id:
        raise AppRefused(f"fab id {fab_id!r} is not the Bayanihan app {shipped.fab_id!r}")
    if hashlib.sha256(content).hexdigest() != fab_hash:
        raise AppRefused("the FAB's content does not match its announced sha256")
    files = fab_file_hashes(content)
    changed = sorted(p for p in files.keys() & shipped.files.keys() if files[p] != shipped.files[p])
    extra = sorted(files.keys() - shipped.files.keys())
    missing = sorted(shipped.files.keys() - files.keys())
    parts = []
    for what, paths in (("files that differ from the installed app", changed),
                        ("files the installed app does not have", extra), ("files missing", missing)):  # fmt: skip
        if paths:
            shown = ", ".join(paths[:5]) + (f" (+{len(paths) - 5} more)" if len(paths) > 5 else "")
            parts.append(f"{what}: {shown}")
    if parts:
        raise AppRefused(f"{fab_id}: " + "; ".join(parts))


# --- Running one job ------------------------------------------------------------------------------------------


def run_job(message: Any, context: Any) -> Any:
    """Run one message through the installed ClientApp and return its reply.

    With BAYANIHAN_WARM_SOCKET set (`join` sets it in the SuperNode's env) the job goes to the node's warm worker
    (federation.warm_worker), which runs the same installed ClientApp with everything already loaded; this process
    imports no torch and only waits, its task heartbeat running. Without it, the ClientApp runs here, cold.
    An unreachable or dying worker raises warm_protocol.WarmUnavailable ("warm worker unavailable: ..."), which
    main() turns into an error reply.
    """
    import os

    from federation import warm_protocol

    socket_path = os.environ.get(warm_protocol.ENV_SOCKET)
    if socket_path:
        from logging import INFO

        from flwr.supercore import log

        reply, attached = warm_protocol.submit(Path(socket_path), message, context)
        if attached:
            log(INFO, "Flower relaunched this task: its reply came from the job already running in the warm worker")
        return reply
    from federation.flwr_app.bayanihan_app.client_app import app

    return app(message=message, context=context)


def main(argv: list[str] | None = None) -> None:
    """`flwr-clientapp` as Flower 1.42's `run_clientapp`, with the FAB check in place of installing the FAB."""
    try:
        # Flower's own parser is compared with ours by `join` at start-up, not here: building it costs ~0.5 CPU-s.
        self_test(compare_cli=False)
    except InternalsChanged as exc:
        print(f"federation.node_runtime: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)

    from logging import ERROR, INFO

    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.common.args import try_obtain_flwr_app_token
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore import log
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
    from flwr.supercore.telemetry import EventType
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    # The same arguments SuperExec gives Flower's flwr-clientapp; --allow-runtime-dependency-installation is
    # accepted and ignored: nothing is ever installed here.
    args = cli_parser().parse_args(argv)
    token = try_obtain_flwr_app_token(args)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # exit if the SuperExec is gone (even after SIGKILL)
    log(INFO, "Start Bayanihan node runtime (installed ClientApp only)")

    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    state: dict[str, Any] = {
        "heartbeat": None,
        "context": None,
        "sub_status": SubStatus.FAILED,
        "details": "ClientApp task failed due to unknown reason",
    }

    def on_exit() -> None:
        retry_invoker.max_tries = 1  # never block the exit on retries
        push_task_output(client=client, context=state["context"], sub_status=state["sub_status"],
                         details=state["details"])  # fmt: skip
        heartbeat = state["heartbeat"]
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(
        event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE, exit_message="Task stopped.", exit_handlers=[on_exit]
    )
    exit_code = ExitCode.SUCCESS
    message = reply = None
    try:
        state["heartbeat"] = HeartbeatSender(make_task_heartbeat_fn_http(client))
        state["heartbeat"].start()
        message, state["context"], run, fab = pull_task_input(client)
        try:
            check_fab(fab_id=run.fab_id, fab_hash=fab.hash_str, content=fab.content)
        except AppRefused as refused:
            reason = f"{REFUSED_PREFIX}{refused}"
            log(ERROR, "%s (run %s)", reason, run.run_id)  # `join` turns this line into a status line
            state["details"] = reason
            reply = Message(Error(code=ErrorCode.INVALID_FAB, reason=reason), reply_to=message)
            exit_code = ExitCode.TASK_PROC_EXCEPTION
        else:
            reply = run_job(message, state["context"])
            state["sub_status"], state["details"] = SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - as Flower's runtime: any failure becomes an error reply
        from federation.warm_protocol import WarmJobFailed, WarmUnavailable

        # The warm channel's own failures read as a sentence ("warm worker unavailable: ..."), not a class name.
        reason = str(ex) if isinstance(ex, (WarmUnavailable, WarmJobFailed)) else f"{type(ex)}:<'{ex}'>"
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        state["details"] = reason
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
        exit_code = ExitCode.TASK_PROC_EXCEPTION
    finally:
        if reply is not None and state["context"] is not None:
            try:
                push_message(client, reply, state["context"])
            except Exception as ex:  # noqa: BLE001
                log(ERROR, "Failed to push reply message", exc_info=ex)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


if __name__ == "__main__":
    main()
