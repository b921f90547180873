"""Benchmark: does the real demo campaign finish on a busy machine and through faults? (not a test; make bench-faults)

Runs `manage.py demo` with its defaults (SmolLM2-135M-Instruct, 3 nodes through `federation join`, 2 rounds) N times
in a row while two busy-loop processes compete for the cores, then once more with faults injected mid-campaign:

- `kill -9` node-1's `flower-supernode` once round 1 is under way (its ClientApp is running), and
- `kill -9` the `flower-superlink` in the middle of round 2 (a ClientApp of round 2 is running); the platform is
  expected to restart it and resume the campaign from its last merged round as a new Flower run.

Each run has its own state folder, var/bench/faults/run-K (its own SQLite database, keys, SuperLink state, logs:
demo.log is the demo's own output), and all share one prepared base model (`--model`), so no run pays for preparing
it. After each run: the campaign's final state and rounds are read from that run's database, and every platform
process still running under its folder is reported ("orphans") and killed, so the next run starts clean.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import REPO, use_platform
from bench.report import Timer, write_section
from bench.site_stack import stop_on_signals
from federation.artifacts import PROVENANCE_NAME

COMMAND = "make bench-faults"
ROOT = REPO / "var" / "bench" / "faults"


def _load_fault_tools():
    """tests/platform/faults.py: the same process finder and killer the fault tests use (loaded by path: test
    tooling is not a package, and this script's own name is `faults` too)."""
    spec = importlib.util.spec_from_file_location("platform_faults", REPO / "tests" / "platform" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


tools = _load_fault_tools()


@dataclass
class Outcome:
    run: str
    load: str
    faulty: bool = False
    injected: list[str] = field(default_factory=list)
    exit_code: int | None = None
    status: str = "no campaign"
    rounds: list[int] = field(default_factory=list)
    num_rounds: int | None = None
    problems: list[str] = field(default_factory=list)
    attempts: str = "1"
    node_failures: list[str] = field(default_factory=list)
    node1_trained: list[int] = field(default_factory=list)  # rounds node-1 trained in (the fault run kills its node)
    seconds: float = 0.0
    reason: str = ""
    orphans: list[str] = field(default_factory=list)

    @property
    def completed(self) -> bool:
        return self.exit_code == 0 and self.status == "completed" and not self.problems


# --- the bench process reads each run's database through Django, one connection alias per run ---------------------


def setup_django() -> None:
    """Django in this process for reading the runs' databases; its own settings never point at a run's state."""
    ROOT.mkdir(parents=True, exist_ok=True)
    os.environ["BAYANIHAN_VAR"] = str(ROOT)
    os.environ["DATABASE_URL"] = f"sqlite:///{ROOT / 'unused.sqlite3'}"  # never opened: each run has an alias
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    use_platform()
    import django

    django.setup()


def run_database(alias: str, path: Path) -> str:
    from django.db import connections

    connections.databases[alias] = {**connections.databases["default"], "NAME": str(path)}
    return alias


def close_database(alias: str) -> None:
    from django.db import connections

    if alias in connections.databases:
        connections[alias].close()


def current_campaign(alias: str):
    """The run's campaign (the demo makes one), or None while the demo is still migrating/starting."""
    from django.db import DatabaseError

    from campaigns.models import Campaign

    try:
        return Campaign.objects.using(alias).order_by("-pk").first()
    except DatabaseError:
        return None


def attempts_of(campaign) -> str:
    """How many Flower runs the campaign took, where the model records attempts (resume); else 1.

    Read generically (the attempts record is being added beside this script): a related model or field whose name
    says 'attempt' — records counted, a number taken as it is, a list by its length. Settings (max_attempts,
    attempt_limit) are not records.
    """
    for f in campaign._meta.get_fields():
        name = f.name.lower()
        if "attempt" not in name or "max" in name or "limit" in name:
            continue
        if f.one_to_many or f.many_to_many:
            manager = getattr(campaign, f.get_accessor_name() if f.auto_created else f.name)
            return f"{manager.count()} ({f.name} records)"
        value = getattr(campaign, f.attname if hasattr(f, "attname") else f.name, None)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return f"{value} ({f.name})"
        if isinstance(value, list | dict):
            return f"{len(value)} ({f.name})"
    return "1"


def node_failures(campaign) -> list[str]:
    """'round N: node (error)' for every node recorded failed in a round: who the faults cost which round."""
    from campaigns.models import Participation

    failed = (
        Participation.objects.using(campaign._state.db)
        .filter(round__campaign_id=campaign.pk)
        .exclude(error="")
        .order_by("round__number", "node__name")
        .values_list("round__number", "node__name", "error")
    )
    return [f"r{number}: {name} ({error.split(' — ')[0][:40]})" for number, name, error in failed]


def trained_rounds(campaign, node: str) -> list[int]:
    from campaigns.models import Participation

    trained = Participation.objects.using(campaign._state.db).filter(
        round__campaign_id=campaign.pk, node__name=node, error="", samples__gt=0
    )
    return sorted(trained.values_list("round__number", flat=True))


# --- one run ------------------------------------------------------------------------------------------------------


def busy_loops(count: int) -> list[subprocess.Popen]:
    """Processes that only burn CPU, as another program on a contributor's machine would."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL, start_new_session=True)
        for _ in range(count)
    ]


def demo_env(var: Path, tag: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BAYANIHAN_VAR"] = str(var)
    env.pop("DATABASE_URL", None)  # each run's own SQLite under its var (never a shared or CI database)
    env["CELERY_QUEUE"] = f"bench-faults-{os.getpid()}-{tag}"  # never shared with another worker on the same Redis
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def log_reason(log: Path) -> str:
    """The demo's own last word: its CommandError line, else its last non-empty line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith(("CommandError:", "Error:")) or "Error:" in line[:40]:
            return line
    return lines[-1] if lines else ""


class FaultPlan:
    """Kill node-1's SuperNode once round 1 is under way, then the SuperLink in the middle of round 2."""

    def __init__(self, var: Path, started: float, superlink_delay: float) -> None:
        self.var, self.started, self.superlink_delay = var, started, superlink_delay
        self.step = 0
        self.waiting_since: float | None = None
        self.clientapp_seen: float | None = None
        self.notes: list[str] = []

    def _note(self, text: str) -> None:
        note = f"{time.monotonic() - self.started:.0f}s: {text}"
        self.notes.append(note)
        print(f"  fault {note}", flush=True)

    def _clientapps(self, node: str | None = None) -> list:
        return tools.find_processes(self.var, "clientapp", node=node)

    def _kill(self, role: str, node: str | None, where: str) -> None:
        try:
            victim = tools.kill9(self.var, role, node=node)
            self._note(f"kill -9 {role}{f' of {node}' if node else ''} (pid {victim.pid}) {where}")
        except LookupError as exc:
            self._note(f"{role} not killed {where}: {exc}")

    def poll(self, rounds: list[int]) -> None:
        now = time.monotonic()
        if self.step == 0 and 0 in rounds:
            # Round 0 (the base model's evaluation) is recorded just before round 1's instructions go out.
            self.step, self.waiting_since = 1, now
        if self.step == 1:
            training = self._clientapps("node-1")
            if training or now - self.waiting_since > 180:
                what = "while its ClientApp trains round 1" if training else "in round 1 (no ClientApp seen in 180s)"
                self._kill("supernode", "node-1", what)
                self.step = 2
        if self.step == 2 and 1 in rounds:
            self.step, self.waiting_since = 3, now
        if self.step == 3:
            if self.clientapp_seen is None and self._clientapps():
                self.clientapp_seen = now
            ready = self.clientapp_seen is not None and now - self.clientapp_seen >= self.superlink_delay
            if ready or now - self.waiting_since > 180:
                what = "in the middle of round 2" if ready else "in round 2 (no ClientApp seen in 180s)"
                self._kill("superlink", None, what)
                self.step = 4

    def finish(self) -> None:
        if self.step < 2:
            self._note("SuperNode never killed: round 1 never started")
        if self.step < 4:
            self._note("SuperLink never killed: round 1 was never recorded")


def run_demo(label: str, load: str, model: Path, args: argparse.Namespace, inject: bool) -> Outcome:
    var = ROOT / label
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    log = var / "demo.log"
    outcome = Outcome(label, load, faulty=inject)
    database = var / "bayanihan.sqlite3"
    alias = run_database(f"run_{label.replace('-', '_')}", database)
    # The fault run waits out a lost node and a SuperLink restart on top of the campaign: it gets twice as long.
    limit = args.run_timeout * (2 if inject else 1)
    command = [sys.executable, "manage.py", "demo", "--model", str(model), "--timeout", str(limit)]
    print(f"{label}: {' '.join(command[1:])} (state {var.relative_to(REPO)}; {load})", flush=True)
    started = time.monotonic()
    plan = FaultPlan(var, started, args.superlink_delay) if inject else None
    with log.open("wb") as out:
        demo = subprocess.Popen(
            command, cwd=REPO, env=demo_env(var, label), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        watchdog = limit + 120  # the demo gives up by itself first; this is for a demo that hangs
        while demo.poll() is None:
            if plan is not None and database.exists():  # (opening it first would create it)
                campaign = current_campaign(alias)
                if campaign is not None:
                    plan.poll(tools.recorded_rounds(campaign, using=alias))
            if time.monotonic() - started > watchdog:
                outcome.reason = f"still running after {watchdog / 60:.0f} min: stopped"
                stop_demo(demo)
                break
            time.sleep(0.5 if plan is not None else 2.0)
    except BaseException:
        stop_demo(demo)
        raise
    outcome.seconds = time.monotonic() - started
    outcome.exit_code = demo.wait()
    if plan is not None:
        plan.finish()
        outcome.injected = plan.notes

    campaign = current_campaign(alias) if database.exists() else None
    if campaign is not None:
        outcome.status = campaign.status
        outcome.num_rounds = campaign.num_rounds
        outcome.rounds = tools.recorded_rounds(campaign, using=alias)
        outcome.attempts = attempts_of(campaign)
        outcome.node_failures = node_failures(campaign)
        outcome.node1_trained = trained_rounds(campaign, "node-1")
        numbers = list(outcome.rounds)
        release = getattr(campaign, "release", None) if campaign.status == "completed" else None
        provenance = Path(release.path) / PROVENANCE_NAME if release is not None else None
        if provenance is not None and provenance.exists():
            # The database keeps one row per round number; the release's provenance lists every round it merged.
            numbers = [r["round"] for r in json.loads(provenance.read_text())["rounds"]]
        outcome.problems = tools.round_numbers_problems(numbers, campaign.num_rounds)
        if not outcome.reason and campaign.status != "completed":
            # Its first line: a crashed process's reason goes on with the tail of its log (in the run's logs/).
            outcome.reason = campaign.status_reason.strip().splitlines()[0].removesuffix("; last log lines:")
    close_database(alias)
    if not outcome.reason and outcome.exit_code != 0:
        outcome.reason = log_reason(log) or f"demo exited with code {outcome.exit_code}"

    left = tools.leftovers(var, grace=args.orphan_grace)
    outcome.orphans = [f"{p.role} {p.pid}" for p in left]
    if left:
        tools.kill_leftovers(var)
        print(f"  left behind (killed now): {', '.join(p.describe() for p in left)}", flush=True)
    verdict = "completed" if outcome.completed else f"NOT completed ({outcome.reason[:200]})"
    print(f"  {label}: {verdict} in {outcome.seconds / 60:.1f} min; rounds {outcome.rounds}", flush=True)
    return outcome


def stop_demo(demo: subprocess.Popen) -> None:
    """SIGTERM first: the demo stops its run and every process it started; SIGKILL if it does not within 60 s."""
    if demo.poll() is not None:
        return
    demo.send_signal(signal.SIGTERM)
    try:
        demo.wait(60)
    except subprocess.TimeoutExpired:
        demo.kill()
        demo.wait()


# --- report -------------------------------------------------------------------------------------------------------


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(outcomes: list[Outcome], model: str, args: argparse.Namespace) -> str:
    busy = [o for o in outcomes if not o.faulty]
    done = sum(o.completed for o in busy)
    faulty = [o for o in outcomes if o.faulty]
    lines = [
        f"`manage.py demo` with its defaults ({model}, 3 nodes through `federation join`, 2 rounds), "
        f"{len(busy)} time(s) in a row{'' if args.no_busy else f' with {args.busy} busy loops competing for the cores'}"
        + ("" if args.no_faults else ", then once with node-1's SuperNode killed (-9) in round 1 and the SuperLink "
           "killed (-9) in the middle of round 2")
        + ". Each run starts from an empty state folder; the base model is prepared once.",
        "",
        f"**{done}/{len(busy)} runs completed**"
        + ("" if not faulty else f"; fault run: **{'completed' if faulty[0].completed else 'failed'}**") + ".",
        "",
        *[f"Fault run: node-1 (its SuperNode killed in round 1) trained in round(s) "
          f"{', '.join(map(str, o.node1_trained)) or 'none'} — it should train again once `join` "
          "brings it back." for o in faulty],
        "",
        "| run | load | faults injected | completed | campaign | rounds recorded | rounds contiguous, none twice "
        "| nodes failed in a round | attempts | wall min | orphans | failure reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for o in outcomes:
        lines.append(
            f"| {o.run} | {o.load} | {_cell('; '.join(o.injected) or '—', 300)} | {'yes' if o.completed else 'no'} "
            f"| {o.status} | {', '.join(map(str, o.rounds)) or '—'} | {_cell('; '.join(o.problems)) or 'yes'} "
            f"| {_cell('; '.join(o.node_failures), 200) or 'none'} | {o.attempts} | {o.seconds / 60:.1f} "
            f"| {', '.join(o.orphans) or 'none'} | {_cell(o.reason) or '—'} |"
        )
    lines += [
        "",
        "Rounds: numbers recorded in the run's database (0 = the base model's evaluation), checked against the "
        "release's provenance.json where there is one. Attempts: Flower runs the campaign took, where the campaign "
        "records them (else 1). Orphans: platform processes (Flower, Celery, uvicorn, Caddy, join, redis) still "
        f"running under the run's folder {args.orphan_grace:.0f} s after the demo exited; killed before the next run. "
        "Logs: var/bench/faults/run-K/demo.log and demo/run/logs/.",
    ]
    return "\n".join(lines)


def prepare_model(args: argparse.Namespace) -> tuple[Path, str]:
    if args.model:
        path = Path(args.model).expanduser().resolve()
        return path, path.name
    models = REPO / "var" / "models"
    if args.tiny:
        from testbed.tiny import build_tiny_checkpoint

        return build_tiny_checkpoint(models / "tiny-llama"), "tiny random Llama"
    from federation.basemodel import prepare_smollm2

    path = models / "smollm2-135m-instruct"
    prepare_smollm2(path, REPO / "var" / "cache")
    return path, "SmolLM2-135M-Instruct"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="demo runs under load, before the fault run")
    parser.add_argument("--tiny", action="store_true", help="tiny random model: checks the harness in minutes")
    parser.add_argument("--model", help="local HF checkpoint (default: SmolLM2-135M-Instruct, prepared under var/)")
    parser.add_argument("--no-busy", action="store_true", help="no busy-loop processes beside the demo")
    parser.add_argument("--no-faults", action="store_true", help="skip the run with faults")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes (default 2: one per core here)")
    parser.add_argument("--run-timeout", type=float, default=None, help="s per run (15/5 min; fault run 2x)")
    parser.add_argument("--superlink-delay", type=float, default=None, help="s into round 2 before killing (10/0)")
    parser.add_argument("--orphan-grace", type=float, default=15.0, help="s after a run before counting orphans")
    args = parser.parse_args()
    if args.run_timeout is None:
        args.run_timeout = 300.0 if args.tiny else 900.0
    if args.superlink_delay is None:
        args.superlink_delay = 0.0 if args.tiny else 10.0
    timer = Timer()
    stop_on_signals()
    setup_django()
    model, model_name = prepare_model(args)

    loops = [] if args.no_busy else busy_loops(args.busy)
    load = "none" if args.no_busy else f"{args.busy} busy loops"
    outcomes: list[Outcome] = []
    try:
        for k in range(1, args.runs + 1):
            outcomes.append(run_demo(f"run-{k}", load, model, args, inject=False))
        if not args.no_faults:
            outcomes.append(run_demo(f"run-{args.runs + 1}", f"{load}, faults", model, args, inject=True))
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()

    title = "Faults: the demo campaign on a busy machine, and through a node and a SuperLink killed mid-round"
    write_section("faults", title, table(outcomes, model_name, args), COMMAND, timer, dry_run=args.no_write)
    return 0 if all(o.completed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
