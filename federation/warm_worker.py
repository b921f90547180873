"""A node's warm worker: one long-lived process that runs every round's ClientApp job with torch, the base model,
the tokenizer and the node's tokenized data already loaded.

Flower 1.42 starts a fresh `flwr-clientapp` per message (no warm ClientApp upstream: flwrlabs/flower#3670). On a
node that process is federation.node_runtime, which checks the FAB and, when `join` set BAYANIHAN_WARM_SOCKET,
hands (message, context) to this worker over a 0600 Unix socket in the node's home (federation.warm_protocol) and
waits for the reply; Flower's task heartbeat keeps running in that shim meanwhile. The worker calls the same
installed ClientApp (`app(message=..., context=...)`) — installed code only, never code from the wire — and the
caches in federation.task / federation.node_data keep what is loaded across rounds and campaigns.

- Jobs are keyed by Flower's message id: a task Flower relaunched (a missed task heartbeat) attaches to the job
  already queued or running and gets its reply instead of training twice; a finished job's reply is kept for
  `grace` seconds for a late relaunch.
- One job trains at a time (training is CPU-bound); others wait in arrival order.
- A job none of whose shims has been connected for `grace` seconds is cancelled: dropped from the queue, or stopped
  between two training steps (federation.task.stop_when).
- A shim whose installed code differs (code_fingerprint: the app files and every `federation` source file) is
  refused with warm_protocol.STALE; the worker then exits once idle so that `join` restarts it on the new code.
- `warm-worker.json` in the home (0600) says what it did: jobs run, attached, cancelled, refused.

`join` starts it beside the SuperNode (procs.Supervisor: its own process group, PR_SET_PDEATHSIG) and restarts it
when it exits.

One host running many nodes (a lab machine, the scale benchmark) may instead run one worker for all of them:
`python -m federation.warm_worker --home DIR --model M` once, and each node's `join --warm-worker DIR/warm.sock`.
Nodes choose by the socket they are given. A shared worker trains one job at a time (its concurrency cap: the model
and LoRA wrapper are loaded once and shared, so two jobs cannot train at once in it), queues up to `--max-waiting`
jobs in arrival order, and each job still loads its own node's data (`data-path` of that node's config); a host
that wants more jobs at once runs more workers and splits its nodes between their sockets. The socket's folder
must be the same user's and 0700, as a node's home is: the worker executes jobs for whoever can connect.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation import task_launcher
from federation import warm_protocol as wire

STATUS_FILE = "warm-worker.json"
EXIT_STALE = 75  # EX_TEMPFAIL: the code on disk changed; start me again
MAX_WAITING = 64  # default jobs queued at once; a node gets one message per round, so more is a runaway


def _say(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, flush=True)


@dataclass
class Job:
    header: wire.JobHeader
    message: bytes
    context: bytes
    waiters: int = 0
    orphaned_since: float | None = None  # monotonic time its last shim left (None while one waits)
    state: str = "queued"  # queued | running | done
    ok: bool = False
    reply: bytes = b""
    reason: str = ""
    cancelled: bool = False
    finished_at: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)


class Worker:
    def __init__(self, home: Path, grace: float = 120.0, max_waiting: int = MAX_WAITING) -> None:
        self.home = home
        self.grace = grace
        self.max_waiting = max_waiting
        self.code = wire.code_fingerprint()
        self.version = wire.federation_version()
        self.lock = threading.Condition()
        self.jobs: dict[str, Job] = {}
        self.queue: deque[Job] = deque()
        self.stale = False
        self.started_at = time.time()
        self.counts = {"run": 0, "attached": 0, "cancelled": 0, "refused": 0, "failed": 0}
        self.last_job: dict[str, Any] = {}
        self.running = ""  # message id of the job training now
        self.listener: socket.socket | None = None

    # --- the socket -------------------------------------------------------------------------------------------

    def bind(self) -> Path:
        mode = stat.S_IMODE(self.home.stat().st_mode)
        if mode & 0o077:
            raise SystemExit(f"warm worker: {self.home} is mode {mode:o}; a node's home must be private (0700)")
        path = wire.socket_path(self.home)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise SystemExit(f"warm worker: {path} exists and is not a socket; remove it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address, fd = wire.short_address(path)
            try:
                probe.connect(address)
                raise SystemExit(f"warm worker: another worker already answers on {path}")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # left by a worker that died
            finally:
                probe.close()
                if fd is not None:
                    os.close(fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, fd = wire.short_address(path)
        old = os.umask(0o177)  # the socket file is born 0600: no window in which others could connect
        try:
            listener.bind(address)
        finally:
            os.umask(old)
            if fd is not None:
                os.close(fd)
        path.chmod(0o600)
        listener.listen(16)
        self.listener = listener
        return path

    def accept_forever(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed at exit
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    # --- one shim's connection ----------------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)  # a shim sends its job at once; a silent peer does not hold a thread forever
            try:
                header = wire.JobHeader.decode(wire.recv_frame(conn, wire.MAX_HEADER))
                message = wire.recv_frame(conn)
                context = wire.recv_frame(conn)
            except (wire.ChannelError, EOFError, OSError) as exc:
                _say(f"dropped a connection that sent no valid job: {exc}")
                return
            refusal = self._refusal(header, message)
            if refusal:
                with self.lock:
                    self.counts["refused"] += 1
                    self._write_status()
                _say(f"refused job {header.message_id[:16]}: {refusal}")
                self._answer(conn, wire.ReplyHeader(ok=False, reason=refusal), b"")
                return
            job, attached = self._enlist(header, message, context)
            if attached:
                _say(f"job {header.message_id[:16]}: a relaunched task attached ({job.state})")
            conn.settimeout(None)
            while not job.done.wait(0.5):
                if _peer_gone(conn):
                    break
            with self.lock:
                job.waiters -= 1
                if job.waiters == 0 and not job.done.is_set():
                    job.orphaned_since = time.monotonic()
                    _say(f"job {header.message_id[:16]}: no task waits for it; cancelled in {self.grace:.0f}s "
                         "unless one comes back")  # fmt: skip
            if job.done.is_set():
                self._answer(conn, wire.ReplyHeader(ok=job.ok, reason=job.reason, attached=attached), job.reply)

    def _refusal(self, header: wire.JobHeader, message: bytes) -> str:
        if header.protocol != wire.PROTOCOL or header.code != self.code or header.federation != self.version:
            with self.lock:
                self.stale = True  # the code on disk is newer than ours: exit once idle; join restarts us
                self.lock.notify_all()
            return (f"{wire.STALE} (worker started with federation {self.version}, code {self.code[:12]}; this task "
                    f"has federation {header.federation}, code {header.code[:12]}); the worker restarts itself "
                    "once idle")  # fmt: skip
        try:
            decoded = wire.decode_message(message)
        except wire.ChannelError as exc:
            return str(exc)
        if str(decoded.metadata.message_id) != header.message_id:
            return "the job header's message id is not the message's own"
        return ""

    def _enlist(self, header: wire.JobHeader, message: bytes, context: bytes) -> tuple[Job, bool]:
        with self.lock:
            job = self.jobs.get(header.message_id)
            attached = job is not None and not job.cancel.is_set()  # a cancelled job is not worth waiting for
            if attached:
                self.counts["attached"] += 1
            else:
                if len(self.queue) >= self.max_waiting:
                    job = Job(
                        header,
                        message,
                        context,
                        state="done",
                        reason=f"warm worker busy: {self.max_waiting} jobs already wait (--max-waiting)",
                    )
                    job.done.set()
                    return job, False
                job = Job(header, message, context)
                self.jobs[header.message_id] = job
                self.queue.append(job)
                self.lock.notify_all()
            job.waiters += 1
            job.orphaned_since = None
            self._write_status()
            return job, attached

    @staticmethod
    def _answer(conn: socket.socket, header: wire.ReplyHeader, reply: bytes) -> None:
        try:
            wire.send_frame(conn, header.encode())
            wire.send_frame(conn, reply)
        except OSError:
            pass  # the shim left; another one for this message may still get it

    # --- housekeeping ---------------------------------------------------------------------------------------------

    def reap_forever(self) -> None:
        while True:
            time.sleep(1.0)
            self.reap(time.monotonic())

    def reap(self, now: float) -> None:
        """Cancel jobs whose shims are gone for `grace` s; forget finished ones after `grace` s."""
        with self.lock:
            for key, job in list(self.jobs.items()):
                if job.state == "done":
                    if now - job.finished_at > self.grace:
                        del self.jobs[key]
                elif job.waiters == 0 and job.orphaned_since is not None and now - job.orphaned_since > self.grace:
                    job.cancel.set()  # a running job stops at its next step; the runner finishes it
                    if job.state == "queued":
                        self.queue.remove(job)
                        self._finish(job, ok=False, reason="cancelled before it started: no task waited for it")

    def _finish(self, job: Job, *, ok: bool, reason: str = "", reply: bytes = b"") -> None:
        """With the lock held."""
        job.ok, job.reason, job.reply = ok, reason, reply
        job.state, job.finished_at = "done", time.monotonic()
        job.cancelled = job.cancel.is_set()
        self.counts["cancelled" if job.cancelled else "run" if ok else "failed"] += 1
        job.done.set()
        self._write_status()
        self.lock.notify_all()

    def _write_status(self) -> None:
        body = {
            "pid": os.getpid(), "started_at": self.started_at, "federation": self.version, "code": self.code,
            "jobs": self.counts, "waiting": len(self.queue), "running": self.running, "last_job": self.last_job,
            "stale": self.stale,
        }  # fmt: skip
        path = self.home / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        tmp.replace(path)

    # --- the training thread (main) -----------------------------------------------------------------------------

    def run_forever(self) -> int:
        while True:
            with self.lock:
                while not self.queue:
                    if self.stale:
                        _say("the node's code changed: exiting so that join restarts the worker on it")
                        return EXIT_STALE
                    self.lock.wait(1.0)
                job = self.queue.popleft()
                job.state, self.running = "running", job.header.message_id
                self._write_status()
            self._run(job)

    def _run(self, job: Job) -> None:
        from federation import task
        from federation.flwr_app.bayanihan_app.client_app import app

        started = time.perf_counter()
        ok, reason, reply = False, "", b""
        try:
            message, context = wire.decode_message(job.message), wire.decode_context(job.context)
            with task.stop_when(job.cancel.is_set), wire.launched(job.header.launched_at):
                reply = wire.encode_message(app(message=message, context=context))
            ok = True
        except task.Cancelled:
            reason = f"cancelled: no task waited for it for {self.grace:.0f}s"
        except Exception as exc:  # noqa: BLE001 - any failure is the job's answer, not the worker's end
            reason = f"{type(exc)}:<'{exc}'>"  # Flower's own wording for a ClientApp exception
            traceback.print_exc()
        seconds = time.perf_counter() - started
        with self.lock:
            self.running = ""
            self.last_job = {"message_id": job.header.message_id, "seconds": round(seconds, 3), "ok": ok}
            self._finish(job, ok=ok, reason=reason, reply=reply)
        _say(f"job {job.header.message_id[:16]} {'done' if ok else 'ended: ' + reason[:200]} in {seconds:.1f}s")


def _peer_gone(conn: socket.socket) -> bool:
    """The shim closed its end (or sent something it never should): nobody waits on this connection."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


def preload(model: str | None, data: str | None) -> None:
    """Import torch and the ClientApp, and load the base model and the node's data with the default settings, so
    the first round is warm too when the campaign uses them (any other LoRA setting loads again at its job)."""
    from federation.config import TrainConfig
    from federation.flwr_app.bayanihan_app import client_app  # noqa: F401 - imports torch, transformers, peft
    from federation.node_data import node_dataset
    from federation.task import reusable_lora_model

    if model:
        cfg = TrainConfig()
        reusable_lora_model(model, cfg)
        if data:
            node_dataset(data, model, cfg)


class LauncherKeeper:
    """The task launcher (federation.task_launcher) beside this worker, started again when it exits; meanwhile
    tasks start cold (slower, nothing lost)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.proc = task_launcher.spawn(socket_path)  # call before any thread starts and before torch is imported
        self.stopping = threading.Event()

    def keep_forever(self) -> None:
        while True:
            code = self.proc.wait()
            if self.stopping.wait(1.0):
                return
            _say(f"task launcher exited with code {code}; starting it again")
            self.proc = task_launcher.spawn(self.socket_path)

    def stop(self) -> None:
        self.stopping.set()
        if self.proc.poll() is None:
            self.proc.terminate()  # it would go anyway (PR_SET_PDEATHSIG); this is the orderly way
            try:
                self.proc.wait(10)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired; it still has its death signal
                self.proc.kill()


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation.warm_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the node's home (0700): the socket and status live there")
    parser.add_argument("--model", help="base-model checkpoint to load at start (the node's --model)")
    parser.add_argument("--data", help="the node's data, tokenized at start")
    parser.add_argument("--grace", type=float, default=120.0,
                        help="seconds a job may have no waiting task before it is cancelled")  # fmt: skip
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=MAX_WAITING,
        help="jobs that may wait at once (a worker shared by many nodes: at least their number)",
    )
    parser.add_argument(
        "--no-launcher",
        dest="launcher",
        action="store_false",
        help="no task launcher: each message's flwr-clientapp imports Flower itself (slower task starts)",
    )
    args = parser.parse_args(argv)
    if args.max_waiting < 1:
        parser.error(f"--max-waiting must be at least 1, not {args.max_waiting}")
    signal.signal(signal.SIGTERM, _stop)
    home = Path(args.home).expanduser().resolve()
    worker = Worker(home, grace=args.grace, max_waiting=args.max_waiting)
    path = worker.bind()
    launcher = None
    try:
        worker._write_status()
        if args.launcher:
            launcher = LauncherKeeper(path)
        threading.Thread(target=worker.accept_forever, daemon=True).start()
        threading.Thread(target=worker.reap_forever, daemon=True).start()
        if launcher is not None:
            threading.Thread(target=launcher.keep_forever, daemon=True).start()
        _say(f"warm worker {os.getpid()} listening on {path} (code {worker.code[:12]})")
        loading = time.perf_counter()
        try:
            preload(args.model, args.data)
        except Exception as exc:  # noqa: BLE001 - a job will load (and report) it again
            _say(f"preloading failed ({exc}); jobs will load what they need")
        _say(f"ready: torch and the ClientApp loaded in {time.perf_counter() - loading:.1f}s")
        return worker.run_forever()
    finally:
        if worker.listener is not None:
            worker.listener.close()
        path.unlink(missing_ok=True)
        if launcher is not None:
            launcher.stop()


if __name__ == "__main__":
    sys.exit(main())
