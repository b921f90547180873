"""The scale benchmark's section of docs/benchmarks.md: its two tables and the findings computed from the results."""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from bench.scale_result import RECORDS_PER_NODE, RESTART_AFTER_S, TRAIN_CONFIG, Result


def fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def mem_cell(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("rss"):
        return "–"
    return f"{entry['pss']:.0f} ({entry['rss']:.0f})"


def spread_cell(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("count"):
        return "–"
    pss = f"{fmt(entry.get('pss_median'))} / {fmt(entry.get('pss_max'))}"
    return f"{pss} ({fmt(entry['rss_median'])} / {fmt(entry['rss_max'])})"


def training(r: Result) -> str:
    return "all" if r.trains_all else str(r.train)


def main_table(results: list[Result]) -> str:
    head = (
        "| N | training | enroll s | nodes online s | launch → round 1 s | launch → done s | updates merged | "
        "SuperLink tree MiB | web MiB | worker MiB | SuperNode MiB typ / max | ClientApp MiB typ / max | "
        "ClientApps at once | shared warm worker MiB | min MemAvailable GiB | outcome |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    rows = [head]
    for r in results:
        mem = r.memory or {}
        groups = mem.get("groups", {})
        part = f"{r.participants_ok}/{r.train}" if r.phase in ("round", "done") else "–"
        rows.append(
            f"| {r.n} | {training(r)} | {fmt(r.enroll_s, digits=1)} | {fmt(r.online_s, digits=1)} | "
            f"{fmt(r.round1_s, digits=1)} | "
            f"{fmt(r.done_s, digits=1)} | {part} | {mem_cell(groups.get('superlink'))} | "
            f"{mem_cell(groups.get('web'))} | {mem_cell(groups.get('worker'))} | {spread_cell(mem.get('node'))} | "
            f"{spread_cell(mem.get('clientapp'))} | {mem.get('clientapp', {}).get('concurrent_max', '–')} | "
            f"{mem_cell(groups.get('warm worker'))} | {mem.get('min_available_gib', '–')} | "
            f"{r.outcome.replace('|', '/')} |"
        )
    return "\n".join(rows)


def comm(by_process: dict[str, Any], program: str) -> dict[str, Any] | None:
    """The entry for `program` (the kernel keeps only the first 15 characters of a process name)."""
    return next((v for k, v in by_process.items() if program.startswith(k)), None)


def warm_cell(r: Result) -> str:
    if r.warm != "shared":
        return "off (every job cold)"
    j = r.warm_jobs
    return " / ".join(str(j.get(k, "–")) for k in ("run", "attached", "cancelled", "failed")) if j else "–"


def detail_table(results: list[Result]) -> str:
    head = (
        "| N | training | site up s | launch → submitted s | launch → round 0 s | server's round 1 s | failures | "
        "lost replies | node restarts | "
        "SuperLink 'database is locked' | "
        "flower-superlink | flower-superexec | flwr-serverapp | join wrapper | all ours MiB | "
        "MemAvailable at start GiB | warm jobs run / attached / cancelled / failed | error lines in logs | "
        "sampler CPU s | teardown s | wall s |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|"
    )
    rows = [head]
    for r in results:
        if not r.memory:
            continue
        by = r.memory.get("superlink_by_process", {})
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.log_errors.items())) or "none"
        rows.append(
            f"| {r.n} | {training(r)} | {fmt(r.site_s, digits=1)} | {fmt(r.submitted_s, digits=1)} | "
            f"{fmt(r.round0_s, digits=1)} | "
            f"{fmt(r.server_round_s, digits=1)} | {r.failures} | {r.lost_replies} | {r.restarts} | {r.db_locked} | "
            f"{mem_cell(comm(by, 'flower-superlink'))} | "
            f"{mem_cell(comm(by, 'flower-superexec'))} | {mem_cell(comm(by, 'flwr-serverapp'))} | "
            f"{mem_cell(r.memory.get('join_wrapper'))} | {mem_cell(r.memory.get('total'))} | "
            f"{r.baseline_available_gib} | {warm_cell(r)} | {errors} | "
            f"{r.memory.get('sampler', {}).get('cpu_s', '–')} | "
            f"{fmt(r.teardown_s, digits=1)} | {fmt(r.wall_s, digits=0)} |"
        )
    return "\n".join(rows)


def findings(results: list[Result], args: argparse.Namespace) -> str:
    """What the numbers say, computed from them (nothing here is written in advance)."""
    lines: list[str] = []
    ran = [r for r in results if r.memory]
    ok = [r for r in ran if r.ok]
    if ok:
        lines.append("Rounds that merged every drawn node's update: " + ", ".join(r.name for r in ok) + ".")
    partial = [r for r in ran if r.completed and not r.ok]
    for r in partial:
        lines.append(f"{r.name} completed its round without every update: {r.outcome}.")
    if not ok and not partial:
        lines.append("No size completed its round on this machine.")
    for r in results:
        if not r.completed:
            where = f" while in phase `{r.phase}`" if r.phase else ""
            started = f", {r.started_nodes}/{r.n} nodes started, {r.online} online" if r.memory else ""
            lines.append(f"{r.name} did not complete{where}{started}: {r.outcome}.")
    locked = [r for r in ran if r.lost_replies or r.db_locked]
    if locked:
        lines.append(
            "The SuperLink's SQLite state refused concurrent writes ('database is locked' → HTTP 500) at "
            + ", ".join(f"{r.name} ({r.db_locked} errors, {r.lost_replies} replies lost)" for r in locked)
            + "; a SuperNode does not resend a refused reply, so the round waited out the campaign's round timeout "
            "and merged the updates it had."
        )
    restarted = [r for r in ran if r.restarts]
    if restarted:
        lines.append(
            "SuperNodes that exited and were started again after 5 s (as `join` does): "
            + ", ".join(f"{r.name}: {r.restarts}" for r in restarted)
            + "."
        )
    timed = sorted(
        (r for r in ran if r.completed and not r.all_train and r.round1_s is not None and r.online_s is not None),
        key=lambda r: r.n,
    )
    if len(timed) >= 2 and timed[0].n < timed[-1].n:
        a, b = timed[0], timed[-1]
        span = b.n - a.n
        lines.append(
            f"From {a.name} to {b.name}: bringing nodes online costs {(b.online_s - a.online_s) / span:.2f} s "
            f"per extra node and the round (launch → recorded) {(b.round1_s - a.round1_s) / span:.2f} s per extra "
            f"node on {len(os.sched_getaffinity(0))} cores."
        )
    nodes = [r for r in ran if r.online_s is not None and r.memory.get("node", {}).get("pss_median")]
    apps = [r for r in ran if r.memory.get("clientapp", {}).get("pss_median")]
    node_pss = statistics.median(r.memory["node"]["pss_median"] for r in nodes) if nodes else 0.0
    if nodes:
        infra = max(sum((r.memory["groups"].get(g) or {}).get("pss", 0) for g in ("superlink", "web", "worker"))
                    for r in ran)  # fmt: skip
        start_avail = max(r.baseline_available_gib for r in ran) * 1024
        room = start_avail - args.min_available_gib * 1024 - infra
        text = (
            f"A standing SuperNode (flower-supernode + its flower-superexec) holds ≈ {node_pss:.0f} MiB PSS. "
            f"With ≈ {start_avail / 1024:.1f} GiB available at the start, the platform's own {infra:.0f} MiB and "
            f"the {args.min_available_gib:.0f} GiB guard, this machine holds about {room / node_pss:.0f} idle nodes"
        )
        warm = [r.memory["groups"]["warm worker"]["pss"] for r in ran if r.memory["groups"].get("warm worker")]
        if apps and warm:
            app_pss, warm_pss = statistics.median(r.memory["clientapp"]["pss_median"] for r in apps), max(warm)
            text += (
                f"; in a round every drawn node's per-message ClientApp is a shim without torch that holds "
                f"≈ {app_pss:.0f} MiB PSS while the one shared warm worker trains the jobs one after another "
                f"(peak {warm_pss:.0f} MiB PSS for all nodes), so by PSS a training node costs "
                f"≈ {node_pss + app_pss:.0f} MiB and about {(room - warm_pss) / (node_pss + app_pss):.0f} nodes "
                "training in the same round fit"
            )
        elif apps:
            app_pss = statistics.median(r.memory["clientapp"]["pss_median"] for r in apps)
            text += (
                f"; each ClientApp process holds ≈ {app_pss:.0f} MiB PSS while it trains and in a round every "
                f"drawn node runs one at the same time, so by PSS a training node costs ≈ {node_pss + app_pss:.0f} "
                f"MiB and about {room / (node_pss + app_pss):.0f} training nodes fit (a pessimistic count: the more "
                "processes share torch's pages, the smaller each one's share; the min MemAvailable column is what "
                "the machine had left)"
            )
        lines.append(text + ".")
    joins = [r.memory["join_wrapper"]["pss"] for r in ran if r.memory.get("join_wrapper", {}).get("pss")]
    if joins and nodes:
        lines.append(
            f"A `python -m federation join` wrapper adds ≈ {statistics.median(joins):.0f} MiB PSS per node "
            f"({100 * statistics.median(joins) / node_pss:.0f}% of a SuperNode): the other nodes ran "
            "`flower-supernode` directly with their enrolled key."
        )
    link = sorted(
        (r.n, r.memory["groups"]["superlink"]["pss"])
        for r in ran
        if r.completed and not r.all_train and r.memory["groups"].get("superlink")
    )
    if len(link) >= 2 and link[0][0] < link[-1][0]:
        (n0, m0), (n1, m1) = link[0], link[-1]
        lines.append(
            f"The SuperLink tree peaked at {m0:.0f} MiB PSS with {n0} nodes and {m1:.0f} MiB with {n1} "
            f"({(m1 - m0) / (n1 - n0):+.1f} MiB per extra node)."
        )
    lines.append(
        "Web server / worker peaks, MiB PSS (RSS): "
        + "; ".join(
            f"{r.name}: {mem_cell(r.memory['groups'].get('web'))} / {mem_cell(r.memory['groups'].get('worker'))}"
            for r in ran
        )
        + "."
    )
    left = {r.name: ", ".join(r.leftovers) for r in results if r.leftovers}
    if left:
        lines.append(
            "Still running after the site had stopped (found by the sweep and killed): "
            + "; ".join(f"{k}: {v}" for k, v in left.items())
            + "."
        )
    return " ".join(lines)


def render(results: list[Result], args: argparse.Namespace) -> str:
    samples = [f"- {r.name}: {s}" for r in results for s in r.error_samples]
    return "\n".join(
        [
            "One round, N real SuperNodes connected and admitted through enrollment (TLS, node auth), of which "
            f"{args.per_round or 'all'} are drawn to train (the campaign's nodes per round; the sizes in "
            f"{args.all_train_sizes or 'none'} run once more with every node training), the tiny random Llama "
            f"({RECORDS_PER_NODE} records per node, {TRAIN_CONFIG['local-steps']} local step, seq-len "
            f"{TRAIN_CONFIG['seq-len']}, 1 thread per app process), launched with campaign_launch (Celery → "
            "Control API → SuperLink → nodes → ServerApp → site). Times in seconds; memory as peak PSS (peak RSS) "
            "in MiB, sampled every "
            f'{args.sample_interval} s (SuperNodes\' PSS every {args.node_pss_every} samples); "typ" is the median '
            f"over nodes or ClientApp processes. Memory guard: MemAvailable < {args.min_available_gib} GiB kills "
            f"the nodes and ends the size. {args.join_nodes} node per size runs the full `python -m federation join` "
            "wrapper; the others run `flower-supernode` directly with their enrolled key (what join runs inside), "
            f"and the benchmark starts one again {RESTART_AFTER_S:.0f} s after it exits, as join does. Node processes "
            f"run at nice {args.node_nice}, process and session autogroup (contributors' nodes have machines of "
            "their own; here they must not starve the SuperLink and the site). "
            + (
                "Every node runs the node's own `flwr-clientapp` (installed code only) as a shim that hands its job "
                "to one warm worker shared by all N nodes (`join --warm-worker`; torch and the model loaded once "
                "for the host, one job trains at a time, in arrival order). "
                if args.warm == "shared"
                else "Every job runs cold: its own ClientApp process imports torch and loads the model (--warm off). "
            )
            + f"Each node's SuperExec asks its SuperNode for work every {args.node_poll_seconds:g} s "
            "(FLWR_SUPEREXEC_TASK_POLL_INTERVAL; `join` uses 0.2 s for one node on its own machine: at that rate 100 "
            "nodes' idle polling alone kept the load average above 100 on these 2 cores and the round's ClientApps "
            "could not start). " + f"The campaign's round timeout is {args.campaign_round_timeout:.0f} s: "
            "after it the round merges the updates that came back and records the missing nodes as failed. "
            "Logs: var/bench/scale/nN/run/logs/.",
            "",
            main_table(results),
            "",
            "Detail (SuperLink tree by process, MiB PSS (RSS); all ours = every process above at its peak moment):",
            "",
            detail_table(results),
            "",
            "**What this shows.** " + findings(results, args),
            *(["", "First error lines in the logs:", "", *samples] if samples else []),
        ]
    )
