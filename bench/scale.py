"""Benchmark: one federated round with 10, 50 and 100 real SuperNodes on this machine (not a test; `make bench-scale`).

What runs, per size N (each size in a fresh child process, so Django, the SuperLink and the site start clean):

* the whole platform from bench/site_stack.py: TLS SuperLink with `--enable-supernode-auth`, web (uvicorn),
  Celery worker, embedded broker, its own SQLite database under var/bench/scale/nN/;
* N contributor nodes admitted through the product's enrollment path: an approved contributor, a one-time
  enrollment token, an EC key made on the node (federation.pki), `POST /api/v1/nodes/enroll` (join's own
  `enroll()`; the site's node_enroll registers the public key with the SuperLink through RegisterNode), then a
  real `flower-supernode` with TLS, `--auth-supernode-private-key` and the node config `join` gives it
  (data-path, name, model-path). `--join-nodes` of them (default 1) run the whole `python -m federation join`
  wrapper; the others start `flower-supernode` directly with the enrolled key, which is what join does inside,
  so N nodes cost 2N processes (SuperNode + its SuperExec) instead of 3N. The join wrapper's own memory is
  measured and reported, so the saving is a number, not a guess. Every node runs the node's own `flwr-clientapp`
  (federation.node_runtime: installed code only) and, with `--warm shared` (default), hands its job to one warm
  worker shared by all N nodes (`python -m federation.warm_worker`, `join --warm-worker`): torch and the model are
  loaded once for the host, each per-message ClientApp is a shim without torch, and the worker trains one job at a
  time in arrival order. `--warm off` runs every job cold in its own ClientApp process, as before the warm worker;
* one campaign of 1 round with min_nodes = N through campaign_create + campaign_launch (the console's path:
  Celery submits the run through the Control API, the ServerApp reports rounds to the site over HTTP), on the
  tiny random Llama (testbed/tiny.py), 4 records per node, 1 local step, seq-len 32, 1 thread per app
  process: the round's cost is the platform's and Flower's, not training.

Timed: enrollment; first node started -> N nodes `online` in the SuperLink's ListNodes; launch -> run submitted
(Celery), -> round 1 in the database (Round with eval_loss), -> campaign completed (release published).

Memory: a sampler thread reads /proc every ~0.5 s: RSS (statm) of every process of ours, and PSS (smaps_rollup,
shared pages split between the processes sharing them, so PSS adds up) of the SuperLink tree (flower-superlink
+ flower-superexec + flwr-serverapp), the web and worker trees, the shared warm worker, each ClientApp process
(flwr-clientapp, one per message: federation.node_runtime) and, every few samples, each SuperNode
(flower-supernode + its flower-superexec). Peaks are reported, with the system's lowest MemAvailable.

Where it breaks: a guard thread reads MemAvailable every 0.2 s; below `--min-available-gib` it SIGKILLs every
node process at once (the bulk of the memory), then the size is wound down cleanly (campaign_cancel stops the
Flower run through the Control API, every process is stopped). A round whose replies were lost (a node logs
"Failed to send message" after the SuperLink answered HTTP 500) is ended at once: with min_nodes = N the ServerApp
would wait out its one-hour round timeout. Each size also has timeouts, and the sweep has a time budget. A size
that broke while its nodes were starting, or timed out, ends the sweep (a larger one cannot do better); one that
broke during the round does not (the next size shows whether standing nodes alone fit).

This module runs the sweep (each size in a child process, `python -m bench.scale --one N`) and writes the section;
bench/scale_sampling.py reads /proc (memory sampler, memory guard, yielder), bench/scale_result.py holds one size's
Result and the workload, bench/scale_report.py renders the tables and the findings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import REPO
from bench.report import Timer, write_section
from bench.scale_report import render
from bench.scale_result import RECORDS_PER_NODE, RESTART_AFTER_S, TRAIN_CONFIG, Result
from bench.scale_sampling import (
    GIB,
    Abort,
    MemoryGuard,
    Sampler,
    Yielder,
    kill_all,
    log,
    mem_available,
    pids_under,
    pids_with_env,
)

VAR = REPO / "var" / "bench" / "scale"
MODEL_DIR = VAR / "model" / "tiny-llama"
ERROR_LINE = re.compile(r"ERROR|Traceback|Killed|Exception:")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SEND_FAILED = "Failed to send message"
WARM_NAME = "node-shared-warm-worker"  # a "node-" name: stop_nodes stops it with the nodes
DB_LOCKED = "database is locked"


# ------------------------------------------------------------------------------------------------ one size


@dataclass
class NodeSpec:
    name: str
    home: Path
    data: Path
    token: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    key: Path | None = None
    join: bool = False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM from the parent: the same clean wind-down as Ctrl-C


def run_size(plan: Result, args: argparse.Namespace, deadline: float) -> Result:
    """Everything for one N; always stops what it started. `deadline` is a time.time() value."""
    from bench.site_stack import running_site

    n, result = plan.n, plan
    result.baseline_available_gib, result.phase = round(mem_available() / GIB, 2), "start"
    started = time.monotonic()
    try:
        with running_site(f"scale/{plan.label}") as site:
            result.site_s = round(time.monotonic() - started, 1)
            SizeRun(n, args, site, result, deadline).run()
    except KeyboardInterrupt:
        result.outcome = "interrupted"
    except Exception as exc:  # the site itself did not come up
        result.outcome = f"error: {type(exc).__name__}: {exc}"[:300]
    result.wall_s = round(time.monotonic() - started, 1)
    return result


class SizeRun:
    """One size on a running site: enroll and start N nodes, wait until online, one round, tear the nodes down."""

    def __init__(self, n: int, args: argparse.Namespace, site: Any, result: Result, deadline: float) -> None:
        self.n, self.args, self.site, self.result, self.deadline = n, args, site, result, deadline
        self.nodes_dir = site.stack.state_dir / "nodes"
        self.sampler = Sampler(args.sample_interval, args.node_pss_every)
        self.sampler.infra = {k: site.stack.supervisor.pid(k) for k in ("superlink", "web", "worker")}
        self.guard = MemoryGuard(int(args.min_available_gib * GIB), self.nodes_dir)
        self.yielder = Yielder(args.node_nice, self.nodes_dir)
        self.campaign: Any = None
        self.commands: dict[str, tuple[list[str], dict[str, str], Path]] = {}  # direct nodes, to restart them
        self.exited: dict[str, float] = {}  # node -> when it was found exited (restarted after RESTART_AFTER_S)
        self.warm_home: Path | None = None  # the shared warm worker's home, when --warm shared

    def run(self) -> None:
        self.guard.start()
        self.sampler.start()
        if self.args.node_nice:
            self.yielder.start()
        try:
            self.exercise()
        except Abort as exc:
            self.result.outcome = str(exc)
        except Exception as exc:  # anything else is recorded too, and everything still stopped
            self.result.outcome = f"error: {type(exc).__name__}: {exc}"[:300]
        finally:  # also on KeyboardInterrupt, which then goes on up
            torn = time.monotonic()
            self.cancel()
            self.result.warm_jobs = warm_counts(self.warm_home)
            self.result.dead_nodes = stop_nodes(self.site.stack.supervisor, self.nodes_dir)
            self.sampler.stop()
            self.guard.stop()
            if self.yielder.is_alive():
                self.yielder.stop()
            self.result.memory = self.sampler.summary()
            scan_logs(self.site.stack.state_dir, self.result)
            self.result.teardown_s = round(time.monotonic() - torn, 1)

    def exercise(self) -> None:
        from campaigns.services.actions import campaign_launch
        from campaigns.services.setup import base_model_register, campaign_create
        from federation.corpus import build_demo_corpus
        from testbed.tiny import build_tiny_checkpoint

        n, result = self.n, self.result
        model = build_tiny_checkpoint(MODEL_DIR)
        base = base_model_register(path=model, name="tiny-llama", hf_id="bayanihan/tiny-random-llama")
        corpus = self.site.var / "corpus"
        build_demo_corpus(corpus, n_contributors=n, max_chunks_per_node=RECORDS_PER_NODE, max_heldout=8)

        result.phase = "enroll"
        nodes = self.enroll(corpus)
        result.phase = "nodes"
        warm = self.start_warm_worker(model) if self.args.warm == "shared" else None
        first = self.start_nodes(nodes, model, warm)
        result.phase = "online"
        self.wait_online(first, min(self.deadline, time.time() + self.args.online_timeout))
        self.check_alive("while the nodes came online")

        result.phase = "round"
        self.campaign = campaign_create(
            name=f"scale N={n}",
            base_model=base,
            data_task="python-docs",
            heldout_path=str(corpus / "heldout.jsonl"),
            train_config=TRAIN_CONFIG,
            num_rounds=1,
            min_nodes=n,
            nodes_per_round=0 if result.train >= n else result.train,
            round_timeout=int(self.args.campaign_round_timeout),
        )
        launched = time.monotonic()
        campaign_launch(campaign=self.campaign)
        log(
            f"N={n}: campaign #{self.campaign.pk} launched (1 round, min_nodes={n}, {result.train} drawn to train, "
            f"round timeout {self.args.campaign_round_timeout:.0f}s)"
        )
        self.follow(launched, min(self.deadline, time.time() + self.args.round_timeout))
        self.record_round()
        result.phase = "done"

    def enroll(self, corpus: Path) -> list[NodeSpec]:
        """Every node through the product's enrollment: approved contributor, one-time token, key made locally."""
        from community.services import enrollment_token_create
        from federation import pki
        from federation.cli.join import enroll
        from stack.local_nodes import local_contributor

        clock = time.monotonic()
        specs = []
        for k in range(1, self.n + 1):
            name = f"node-{k}"
            spec = NodeSpec(name, self.nodes_dir / name, corpus / name, join=k <= self.args.join_nodes)
            spec.token, _ = enrollment_token_create(contributor=local_contributor(name))
            if not spec.join:  # a join node makes its key and enrolls itself, over the same HTTP endpoint
                spec.home.mkdir(parents=True, exist_ok=True)
                spec.key, public_pem = pki.ensure_node_key(spec.home)
                spec.state = enroll(self.site.url, spec.token, public_pem, name, spec.home)
            specs.append(spec)
        self.result.enroll_s = round(time.monotonic() - clock, 1)
        direct = sum(1 for s in specs if not s.join)
        log(f"N={self.n}: {direct} nodes enrolled over HTTP in {self.result.enroll_s}s")
        return specs

    def start_warm_worker(self, model: Path) -> Path:
        """One warm worker for every node of this host (what `join --warm-worker` points at); returns its socket.
        It lives under the nodes' folder, so the memory guard kills it and stop_nodes stops it with the nodes; unlike
        them it keeps its normal priority (Yielder.spare)."""
        from federation import procs, warm_protocol

        home = self.nodes_dir / "shared-warm"
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.chmod(0o700)
        command = [sys.executable, "-m", "federation.warm_worker", "--home", str(home), "--model", str(model),
                   "--max-waiting", str(self.n + 16)]  # fmt: skip
        proc = self.site.stack.supervisor.start(WARM_NAME, command, env=procs.flower_env(home / "flwr-home"), cwd=home)
        self.sampler.infra["warm worker"] = proc.pid
        self.yielder.spare.add(proc.pid)
        try:  # in case the yielder saw it first
            os.setpriority(os.PRIO_PROCESS, proc.pid, 0)
            Path(f"/proc/{proc.pid}/autogroup").write_text("0")
        except OSError:
            pass
        socket = warm_protocol.socket_path(home)
        deadline = time.monotonic() + 120
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Abort(f"the shared warm worker did not start (log: {home.parent.parent / 'logs'})")
            time.sleep(0.2)
        log(f"N={self.n}: shared warm worker {proc.pid} listening on {socket}")
        self.warm_home = home
        return socket

    def start_nodes(self, nodes: list[NodeSpec], model: Path, warm: Path | None = None) -> float:
        from federation import procs, warm_protocol

        supervisor, first, ports = self.site.stack.supervisor, time.monotonic(), set()
        for spec in nodes:
            self.guard.check()
            if spec.join:
                self.site.stack.start_join(spec.name, self.site.url, spec.token, spec.data, model, warm_socket=warm,
                                           env={procs.TASK_POLL_ENV: str(self.args.node_poll_seconds)})  # fmt: skip
                self.sampler.add_node(spec.name, supervisor.pid(f"node-{spec.name}"), wrapper=True)
            else:
                port = procs.free_port()
                while port in ports:
                    port = procs.free_port()
                ports.add(port)
                config = {"data-path": str(spec.data.resolve()), "name": spec.name, "model-path": str(model.resolve())}
                command = procs.supernode_command(spec.state["superlink"], port, config, spec.home / "ca.crt", spec.key)
                # The node's own flwr-clientapp first on PATH, as join sets it up (installed code only).
                env = procs.flower_env(spec.home / "flwr-home", node_bin=procs.node_runtime_bin(spec.home),
                                       task_poll_seconds=self.args.node_poll_seconds)  # fmt: skip
                if warm is not None:
                    env[warm_protocol.ENV_SOCKET] = str(warm)
                self.commands[spec.name] = (command, env, spec.home)
                proc = supervisor.start(f"node-{spec.name}", command, env=env, cwd=spec.home)
                self.sampler.add_node(spec.name, proc.pid)
            self.result.started_nodes += 1
        log(f"N={self.n}: {len(nodes)} node processes started in {time.monotonic() - first:.1f}s")
        return first

    def revive(self) -> None:
        """Start again a direct node whose SuperNode exited, RESTART_AFTER_S later: what `join` does for the one
        node it runs (e.g. after "Failed to activate SuperNode" when an activation timed out and was retried)."""
        supervisor = self.site.stack.supervisor
        for name in self.commands:
            code = supervisor.returncode(f"node-{name}")
            if code is None:
                continue
            found = self.exited.setdefault(name, time.monotonic())
            if time.monotonic() - found < RESTART_AFTER_S:
                continue
            self.guard.check()
            del self.exited[name]
            log(f"N={self.n}: {name} exited with code {code}; starting it again (as join would)")
            self.sampler.add_node(name, supervisor.restart(f"node-{name}").pid)
            self.result.restarts += 1

    def wait_online(self, first: float, deadline: float) -> None:
        last_report = time.monotonic()
        while True:
            self.guard.check()
            self.revive()
            try:
                self.result.online = online_count()
            except Exception as exc:  # a SuperLink busy with N connecting nodes may answer late: ask again
                log(f"N={self.n}: ListNodes failed ({type(exc).__name__}); asking again")
                time.sleep(1)
                continue
            if self.result.online >= self.n:
                self.result.online_s = round(time.monotonic() - first, 1)
                log(f"N={self.n}: all {self.n} nodes online after {self.result.online_s}s")
                return
            if time.time() > deadline:
                raise Abort(
                    f"timeout: {self.result.online}/{self.n} nodes online after {time.monotonic() - first:.0f}s"
                )
            if time.monotonic() - last_report > 15:
                log(f"N={self.n}: {self.result.online}/{self.n} online; MemAvailable {mem_available() / GIB:.1f} GiB")
                last_report = time.monotonic()
            time.sleep(1)

    def follow(self, launched: float, deadline: float) -> None:
        """Poll the database the way the console shows progress: submitted, round 0, round 1, terminal."""
        from campaigns.models import Round

        campaign, result, last_report, last_scan = self.campaign, self.result, time.monotonic(), 0.0
        while True:
            self.guard.check()
            campaign.refresh_from_db()
            now = round(time.monotonic() - launched, 1)
            if result.submitted_s is None and campaign.flwr_run_id:
                result.submitted_s = now
            rounds = set(
                Round.objects.filter(campaign=campaign).exclude(eval_loss=None).values_list("number", flat=True)
            )
            if result.round0_s is None and 0 in rounds:
                result.round0_s = now
            if result.round1_s is None and 1 in rounds:
                result.round1_s = now
                log(f"N={self.n}: round 1 recorded {now}s after launch")
            if campaign.is_terminal:
                result.done_s = now
                return
            self.check_alive("during the round")
            self.revive()
            if 1 not in rounds and time.monotonic() - last_scan > 5:
                self.count_lost_replies()
                last_scan = time.monotonic()
            if time.time() > deadline:
                raise Abort(
                    f"timeout: campaign still {campaign.status} {now:.0f}s after launch, rounds {sorted(rounds)}"
                )
            if time.monotonic() - last_report > 15:
                log(f"N={self.n}: campaign {campaign.status}, rounds {sorted(rounds)}, {now:.0f}s after launch")
                last_report = time.monotonic()
            time.sleep(0.5)

    def count_lost_replies(self) -> None:
        """A node whose reply the SuperLink refused does not send it again: the round then waits out the
        campaign's round timeout and merges the replies it has (the lost ones are recorded as failures)."""
        lost = lost_replies(self.site.stack.state_dir)
        if lost > self.result.lost_replies:
            log(f"N={self.n}: {lost} node(s) could not send their reply; the round will wait out its timeout")
        self.result.lost_replies = lost

    def record_round(self) -> None:
        from campaigns.models import Participation, Round

        campaign, result = self.campaign, self.result
        result.campaign_status, result.campaign_reason = campaign.status, campaign.status_reason[:200]
        result.release = hasattr(campaign, "release") and campaign.release is not None
        round1 = Round.objects.filter(campaign=campaign, number=1).first()
        if round1 is not None:
            result.participations = Participation.objects.filter(round=round1).count()
            result.participants_ok, result.failures = round1.participants, round1.failures
            result.server_round_s = None if round1.duration_s is None else round(round1.duration_s, 1)
        if campaign.status == "completed" and result.participants_ok < result.train:
            result.outcome = (
                f"completed with {result.participants_ok}/{result.train} updates merged after the round timeout "
                f"({result.failures} failed)"
            )
        elif campaign.status == "completed":
            result.outcome = "ok" if result.release else "completed, but no release"
        else:
            result.outcome = f"campaign {campaign.status}: {campaign.status_reason}"

    def check_alive(self, when: str) -> None:
        supervisor = self.site.stack.supervisor
        dead = [k for k in ("superlink", "web", "worker") if supervisor.returncode(k) is not None]
        if dead:
            raise Abort(f"{', '.join(dead)} died {when}")

    def cancel(self) -> None:
        """A campaign still queued or running is cancelled the console's way (its Flower run is stopped)."""
        if self.campaign is None:
            return
        from campaigns.services.actions import campaign_cancel

        self.campaign.refresh_from_db()
        if not self.campaign.is_terminal:
            try:
                campaign_cancel(campaign=self.campaign, reason=f"scale benchmark: {self.result.outcome}"[:200])
            except Exception as exc:
                log(f"cancel failed: {exc!r}")
            self.campaign.refresh_from_db()
        self.result.campaign_status = self.result.campaign_status or self.campaign.status


def warm_counts(home: Path | None) -> dict[str, int]:
    """The shared warm worker's own count of jobs (run, attached, cancelled, refused, failed)."""
    from federation.warm_worker import STATUS_FILE

    try:
        return dict(json.loads((home / STATUS_FILE).read_text())["jobs"]) if home else {}
    except (OSError, ValueError, KeyError):
        return {}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def online_count() -> int:
    from flwr.proto.control_pb2 import ListNodesRequest
    from flwr.supercore.constant import NodeStatus

    from bayanihan_site.superlink import superlink_client

    nodes = superlink_client().ListNodes(ListNodesRequest()).nodes_info
    return sum(1 for node in nodes if node.status == NodeStatus.ONLINE)


def stop_nodes(supervisor: Any, nodes_dir: Path, timeout: float = 15.0) -> int:
    """All nodes at once (SIGTERM to every group, then SIGKILL), not one by one. Returns how many had died before."""
    names = supervisor.names("node-")
    dead = sum(1 for name in names if supervisor.returncode(name) is not None)
    supervisor.stop_many(names, timeout)
    time.sleep(0.5)
    stragglers = pids_under(nodes_dir)  # a join's SuperNode runs in its own session; SuperExecs may linger
    if stragglers:
        log(f"{len(stragglers)} node processes outlived their SuperNode: stopping them")
        kill_all(stragglers, signal.SIGTERM)
        time.sleep(2)
        kill_all(pids_under(nodes_dir))
    return dead


def scan_logs(state_dir: Path, result: Result) -> None:
    """Count error lines in every log of this size, by kind of process; keep a few distinct examples."""
    samples: dict[str, None] = {}
    for path in sorted(state_dir.rglob("*.log")):
        kind = "node" if "nodes" in path.parts or path.stem.startswith("node-") else path.stem
        for line in path.read_text(errors="replace").splitlines():
            if ERROR_LINE.search(line):
                result.log_errors[kind] = result.log_errors.get(kind, 0) + 1
                if len(samples) < 4:
                    samples.setdefault(f"{kind}: {ANSI.sub('', line).strip()[:160]}")
    result.error_samples = list(samples)
    result.db_locked = _read(state_dir / "logs" / "superlink.log").count(DB_LOCKED)
    result.lost_replies = lost_replies(state_dir)


def lost_replies(state_dir: Path) -> int:
    """Nodes whose reply the SuperLink refused: "Failed to send message" in their log."""
    return sum(1 for path in state_dir.rglob("*.log") if "node" in path.name and SEND_FAILED in _read(path))


# ------------------------------------------------------------------------------------------------ the sweep


def run_child(plan: Result, args: argparse.Namespace, deadline: float) -> Result:
    """One size in its own Python process (a fresh Django, database and SuperLink); returns its Result."""
    n = plan.n
    out = VAR / f"result-{plan.label}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "bench.scale", "--one", str(n), "--train", str(plan.train),
               *(["--all-train-run"] if plan.all_train else []), "--out", str(out),
               "--deadline", str(deadline), *_pass_through(args)]  # fmt: skip
    child = subprocess.Popen(command, cwd=REPO)
    try:
        child.wait(timeout=max(60.0, deadline - time.time() + 120))
    except subprocess.TimeoutExpired:
        log(f"N={n}: child overran its deadline; asking it to stop")
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    except KeyboardInterrupt:
        child.wait()  # it got the Ctrl-C too and is winding down
        raise
    finally:
        leftovers = _sweep(VAR / plan.label)
    if out.exists():
        result = Result(**json.loads(out.read_text()))
    else:
        result = replace(plan, outcome=f"child exited with code {child.returncode} and no result")
    result.leftovers = leftovers
    return result


def _sweep(var: Path) -> list[str]:
    """Safety net: anything of this size still running (by working directory or BAYANIHAN_VAR) is stopped."""
    pids = set(pids_under(var)) | set(pids_with_env("BAYANIHAN_VAR", str(var)))
    names = sorted(program(pid) for pid in pids)
    if pids:
        log(f"{len(pids)} processes of {var.name} outlived it, stopping them: {', '.join(map(describe, pids))}")
        kill_all(pids, signal.SIGTERM)
        time.sleep(3)
        kill_all(set(pids_under(var)) | set(pids_with_env("BAYANIHAN_VAR", str(var))))
    return names


def program(pid: int) -> str:
    """The program a process runs: the script after the interpreter, e.g. flower-superexec."""
    words = describe(pid).split()
    script = next((w for w in words[2:3] if not w.startswith("-")), words[-1] if len(words) > 1 else "?")
    return Path(script).name


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return str(pid)
    return f"{pid} {command[:120]}"


def _pass_through(args: argparse.Namespace) -> list[str]:
    return [
        "--online-timeout", str(args.online_timeout), "--round-timeout", str(args.round_timeout),
        "--min-available-gib", str(args.min_available_gib), "--join-nodes", str(args.join_nodes),
        "--node-nice", str(args.node_nice), "--campaign-round-timeout", str(args.campaign_round_timeout),
        "--per-round", str(args.per_round), "--warm", args.warm, "--node-poll-seconds", str(args.node_poll_seconds),
        "--sample-interval", str(args.sample_interval), "--node-pss-every", str(args.node_pss_every),
    ]  # fmt: skip


def broke_early(result: Result) -> bool:
    """A size that cannot get better with more nodes: it broke before the round, or ran out of time."""
    return not result.ok and (
        result.phase in ("start", "enroll", "nodes", "online") or result.outcome.startswith("timeout")
    )


def sweep(args: argparse.Namespace, timer: Timer) -> list[Result]:
    results: list[Result] = []
    stop = ""
    budget_end = time.time() + args.budget_min * 60 - timer.minutes * 60
    plans = [Result(n=n, train=min(n, args.per_round or n), warm=args.warm) for n in args.sizes]
    plans += [Result(n=n, train=n, all_train=True, warm=args.warm)
              for n in args.all_train_sizes if min(n, args.per_round or n) < n]  # fmt: skip
    for plan in plans:
        n = plan.n
        if stop and not plan.all_train:
            results.append(replace(plan, outcome=f"not run: {stop}"))
            continue
        if budget_end - time.time() < args.min_size_s:
            results.append(replace(plan, outcome="not run: time budget spent"))
            continue
        floor = args.min_available_gib + 0.5
        if mem_available() / GIB < floor:
            results.append(replace(plan, outcome=f"not run: MemAvailable under {floor:.1f} GiB before starting"))
            continue
        log(f"=== N={n}, {plan.train} training")
        result = run_child(plan, args, budget_end)
        results.append(result)
        log(f"N={n}: {result.outcome} ({result.wall_s}s)")
        if broke_early(result) and not plan.all_train:
            stop = f"N={n} broke ({result.phase})"
    return results


# ------------------------------------------------------------------------------------------------ entry points


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100], help="numbers of SuperNodes")
    parser.add_argument("--online-timeout", type=float, default=420, help="seconds for N nodes to come online")
    parser.add_argument("--round-timeout", type=float, default=600, help="seconds from launch to campaign end")
    parser.add_argument("--budget-min", type=float, default=28, help="the whole sweep's time budget in minutes")
    parser.add_argument("--min-size-s", type=float, default=150, help="skip a size with less budget than this left")
    parser.add_argument("--min-available-gib", type=float, default=2.0, help="memory guard floor (MemAvailable)")
    parser.add_argument("--join-nodes", type=int, default=1, help="nodes run through `python -m federation join`")
    parser.add_argument("--node-nice", type=int, default=19,
                        help="nice value (process and autogroup) of the node processes: contributors' nodes "
                        "have machines of their own, so here they yield the cores to the SuperLink and the site; "
                        "0: off")  # fmt: skip
    parser.add_argument("--per-round", type=int, default=10,
                        help="nodes drawn to train in the round (the campaign's nodes per round); "
                        "0: every node")  # fmt: skip
    parser.add_argument("--all-train-sizes", type=int, nargs="*", default=[50],
                        help="sizes run once more with every node training at once")  # fmt: skip
    parser.add_argument("--campaign-round-timeout", type=float, default=300,
                        help="the campaign's round timeout: how long the round waits for replies")  # fmt: skip
    parser.add_argument(
        "--warm",
        choices=("shared", "off"),
        default="shared",
        help="shared: one warm worker for all nodes (join --warm-worker); off: every job cold",
    )
    parser.add_argument("--node-poll-seconds", type=float, default=1.0,
                        help="each node's SuperExec task poll (FLWR_SUPEREXEC_TASK_POLL_INTERVAL); join's 0.2 s costs "
                        "5 local requests a second per node, which 100 nodes on 2 cores cannot pay")  # fmt: skip
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--node-pss-every", type=int, default=4, help="read SuperNodes' PSS every K samples")
    parser.add_argument("--no-write", action="store_true", help="print the tables, leave docs/benchmarks.md alone")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one size (the child)
    parser.add_argument("--train", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--all-train-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    plan = Result(n=args.one, train=args.train or args.one, all_train=args.all_train_run, warm=args.warm)
    result = run_size(plan, args, args.deadline or time.time() + args.online_timeout + args.round_timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(asdict(result), indent=2))
    return 130 if result.outcome == "interrupted" else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return child_main(args)
    timer = Timer()
    VAR.mkdir(parents=True, exist_ok=True)
    results = sweep(args, timer)
    body = render(results, args)
    title = "Scale: one round with many SuperNodes"
    write_section("scale", title, body, "make bench-scale", timer, dry_run=args.no_write)
    return 0 if any(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
