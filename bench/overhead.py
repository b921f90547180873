"""Benchmark: what does one federated round cost beyond its training steps? (not a test; `make bench-overhead`)

The whole platform runs here: web (uvicorn), Celery worker, TLS SuperLink with node authentication, and N contributor
nodes enrolled through `python -m federation join`. A staff user launches a 1-round campaign over HTTP, exactly as
the console's Launch button does. The clock runs from that POST until round 1 is recorded in the database: merged,
its adapter files stored (what a resume or a download needs). The server's held-out evaluation of the round follows
it (for earlier rounds of a campaign it overlaps the next round's training); its time is reported beside.

Then, in this process, the same local steps (every node's local-steps on its own data, one after another) run in a
bare PEFT loop. Ratio = platform round / bare loop, measured side by side in one run.

Where the difference goes comes from timestamps the product records anyway: the SuperLink's run record
(pending/starting/running), the ServerApp's journal (process start, model load, held-out evaluation, message sent,
replies in, merged) and each ClientApp's metrics (process start-up, model load, validation, training).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench import REPO
from bench.flower_cluster import journal
from bench.report import Timer, write_section
from bench.site_stack import running_site

COMMAND = "make bench-overhead"


def epoch(value: str) -> float:
    """The SuperLink's ISO timestamps (UTC) as epoch seconds."""
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp() if value else float("nan")


def staff_session(url: str):
    """A logged-in staff browser session (CSRF and all), as a person at the console would have."""
    import requests
    from django.contrib.auth import get_user_model

    password = "bench-overhead-staff"
    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    user.is_staff = True
    user.set_password(password)
    user.save()
    session = requests.Session()
    session.get(f"{url}/login/", timeout=30)
    response = session.post(
        f"{url}/login/",
        data={"username": user.username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        headers={"Referer": f"{url}/login/"},
        timeout=30,
    )
    if "sessionid" not in session.cookies:
        raise RuntimeError(f"staff login failed: HTTP {response.status_code}")
    return session


def wait_nodes_online(control, count: int, check, timeout: float = 300) -> float:
    from federation.control import online_node_ids

    started = time.monotonic()
    while len(online_node_ids(control)) < count:
        check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"fewer than {count} nodes online after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - started


def launch_and_time(session, site, campaign) -> tuple[float, float]:
    """POST the console's Launch; return (epoch when sent, epoch when round 1 was on record with its files)."""
    from campaigns.models import Round
    from campaigns.services.reports import round_sealed

    page = session.get(f"{site.url}/console/campaigns/{campaign.pk}/", timeout=30)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("no CSRF token on the console's campaign page")
    sent = time.time()
    response = session.post(
        f"{site.url}/console/campaigns/{campaign.pk}/launch",
        data={"csrfmiddlewaretoken": token.group(1)},
        headers={"Referer": page.url},
        timeout=30,
    )
    if response.status_code >= 400:
        raise RuntimeError(f"console launch refused: HTTP {response.status_code}")
    deadline = time.monotonic() + 1800
    while not any(round_sealed(r) for r in Round.objects.filter(campaign=campaign, number=1)):
        site.stack.check()
        campaign.refresh_from_db()
        if campaign.is_terminal and campaign.status != campaign.Status.COMPLETED:
            raise RuntimeError(f"campaign {campaign.status}: {campaign.status_reason}")
        if time.monotonic() > deadline:
            raise TimeoutError("round 1 not recorded within 30 min")
        time.sleep(0.05)
    return sent, time.time()


def wait_completed(campaign, check, timeout: float = 600) -> float:
    """Epoch time at which the campaign was seen completed (its release signed and published)."""
    deadline = time.monotonic() + timeout
    while not campaign.is_terminal:
        check()
        if time.monotonic() > deadline:
            raise TimeoutError("campaign did not complete")
        time.sleep(0.2)
        campaign.refresh_from_db()
    if campaign.status != campaign.Status.COMPLETED:
        raise RuntimeError(f"campaign {campaign.status}: {campaign.status_reason}")
    return time.time()


def event(events: list[dict], kind: str, number: int) -> dict:
    """The ServerApp's journal entry of this type (events.EVENT_ROUND, EVENT_EVALUATED) for round `number`."""
    return next(e for e in events if e["type"] == kind and e["round"] == number)


def slowest_node(round_event: dict) -> dict:
    """The metrics of the round's slowest node (by its own clock): the round's critical path."""
    return max(round_event["nodes"], key=lambda n: n["metrics"]["node-seconds"])["metrics"]


def breakdown(sent: float, recorded: float, run, events: list[dict]) -> list[tuple[str, str, float]]:
    """(part, what it is, seconds) along the critical path from the POST to round 1 in the database."""
    started = next(e for e in events if e["type"] == "started")
    r0, r1 = event(events, "round", 0), event(events, "round", 1)
    t0, t1 = r0["timings"], r1["timings"]
    # The slowest node is the round's critical path; its own clock splits its part.
    slow = slowest_node(r1)
    waiting = (t1["replies"] - t1["sent"]) - slow["node-seconds"]
    pending = epoch(run.pending_at)
    parts = [
        ("platform dispatch", "console POST → Celery task → FAB built → run pending on the SuperLink", pending - sent),
        ("process start", "SuperLink starts the ServerApp process (SuperExec poll, spawn)",
         started["process_started"] - pending),
        ("process start", "ServerApp imports (torch, transformers)", started["time"] - started["process_started"]),
        ("model loading", "server loads base model + LoRA, tokenizes held-out", t0["started"] - started["time"]),
        # Round 0 (the base model) is evaluated, saved and reported by the ServerApp's evaluator thread while round 1
        # trains: on the critical path is only its hand-off (copying the adapter) and building round 1's messages.
        ("bookkeeping", "round 0 handed to the evaluator, round 1's instructions built", t1["sent"] - t0["started"]),
        ("transport", "messages to and from the nodes, SuperNode polling, waiting for the slowest", waiting),
        ("process start", "ClientApp process start-up on the slowest node", slow["startup-seconds"]),
        ("model loading", "node loads base model + LoRA + its data", slow["load-seconds"]),
        ("evaluation", "node validation loss (node-validation: after training by default)", slow["eval-seconds"]),
        ("training", "the slowest node's local steps", slow["train-seconds"]),
        ("transport", "node packs its reply (adapter tensors)", slow["node-seconds"] - slow["startup-seconds"]
         - slow["load-seconds"] - slow["eval-seconds"] - slow["train-seconds"]),
        ("aggregation", "validate replies + FedAvg", t1["aggregated"] - t1["replies"]),
        ("bookkeeping", "merged adapter handed to the recorder, saved and hashed", t1["saved"] - t1["aggregated"]),
        ("bookkeeping", "round 1 reported, its files uploaded and recorded in the database", recorded - t1["saved"]),
    ]  # fmt: skip
    return parts


def bare_loop(model_path: Path, corpus: Path, names: list[str], cfg) -> tuple[float, float, int]:
    """Every node's local steps in one process, one node after another: (train seconds, load seconds, tokens)."""
    from federation.node_data import node_dataset
    from federation.task import lora_model, train

    train_s = load_s = 0.0
    tokens = 0
    for name in names:
        started = time.perf_counter()
        data = node_dataset(str(corpus / name), str(model_path), cfg)
        model = lora_model(str(model_path), cfg)
        load_s += time.perf_counter() - started
        result = train(model, data.train, cfg, data.pad_id, round_seed=1)
        train_s += result.seconds
        tokens += result.tokens
    return train_s, load_s, tokens


def first_step(sent: float, events: list[dict]) -> tuple[float, float]:
    """(launch → the slowest node's first local step, its message → first local step), by the ServerApp's clock
    for the instructions and the node's own for its start: the delivery in between is not counted (it is in the
    transport row)."""
    r1 = event(events, "round", 1)
    slow = slowest_node(r1)
    node = slow["startup-seconds"] + slow["load-seconds"]  # node-validation "after": nothing before training
    return r1["timings"]["sent"] - sent + node, node


def report(
    parts, total: float, bare: tuple[float, float, int], round_only: float, evaluation: float, publish: float,
    starts: tuple[float, float], args,
) -> str:  # fmt: skip
    train_s, load_s, tokens = bare
    lines = [
        f"{args.nodes} nodes (`federation join`, TLS, node auth) on this machine, SmolLM2-135M-Instruct, LoRA r 8 on "
        f"q/k/v/o, {args.local_steps} local steps × batch {args.batch_size} × seq-len {args.seq_len} per node, "
        f"1 round, nodes 1 torch thread each; the bare loop one thread per core.",
        "",
        "| measured | seconds |",
        "|---|---|",
        f"| platform: console Launch → round 1 recorded | {total:.1f} |",
        f"| platform: round 1 only (instructions sent → recorded) | {round_only:.1f} |",
        f"| bare PEFT loop: the same {args.nodes} × {args.local_steps} steps in one process ({tokens:,} tokens) | "
        f"{train_s:.1f} |",
        f"| bare loop's model loading ({args.nodes} ×), not in the ratio | {load_s:.1f} |",
        f"| **ratio, launch → recorded / bare loop** | **{total / train_s:.2f}×** |",
        f"| **ratio, round 1 only / bare loop** | **{round_only / train_s:.2f}×** |",
        f"| launch → first local step on the slowest node (message delivery not counted) | {starts[0]:.1f} |",
        f"| a warm node: message received → first local step | {starts[1]:.1f} |",
        f"| after the round: the server's held-out evaluation of round 1 (recorded before it) | {evaluation:.1f} |",
        f"| after the round: campaign completed, release signed and published | {publish:.1f} |",
        "",
        "Where the platform's time went (critical path; the slowest node's own clock for its part):",
        "",
        "| part | step | seconds | share |",
        "|---|---|---|---|",
    ]
    for kind, what, seconds in parts:
        lines.append(f"| {kind} | {what} | {seconds:.1f} | {seconds / total * 100:.0f}% |")
    accounted = sum(s for _, _, s in parts)
    lines.append(f"| (unaccounted) | clocks' rounding, polling of the database here | {total - accounted:.1f} | "
                 f"{(total - accounted) / total * 100:.0f}% |")  # fmt: skip
    by_kind: dict[str, float] = {}
    for kind, _, seconds in parts:
        by_kind[kind] = by_kind.get(kind, 0.0) + seconds
    overhead = total - by_kind.get("training", 0.0)
    lines += ["", "Overhead by kind (everything but training, as a share of the overhead):", ""]
    lines += ["| kind | seconds | share of overhead |", "|---|---|---|"]
    for kind, seconds in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if kind != "training":
            lines.append(f"| {kind} | {seconds:.1f} | {seconds / overhead * 100:.0f}% |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local HF checkpoint (default: SmolLM2-135M-Instruct, prepared under var/)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-chunks", type=int, default=120)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    timer = Timer()

    with running_site("overhead") as site:
        from bayanihan_site.superlink import superlink_client
        from campaigns.services.setup import base_model_register, campaign_create, campaign_output_dir
        from federation import control
        from federation.basemodel import SMOLLM2_ID, prepare_smollm2
        from federation.config import TrainConfig
        from federation.corpus import build_demo_corpus
        from stack.local_nodes import start_local_nodes

        model = Path(args.model).resolve() if args.model else REPO / "var" / "models" / "smollm2-135m-instruct"
        if not args.model:
            prepare_smollm2(model, REPO / "var" / "cache")
        base = base_model_register(path=model, name=model.name, hf_id="" if args.model else SMOLLM2_ID)
        corpus = site.var / "corpus"
        manifest = build_demo_corpus(corpus, args.nodes, max_chunks_per_node=args.max_chunks, max_heldout=args.heldout)
        names = list(manifest["nodes"])
        start_local_nodes(site.stack, names, site.url, corpus, model)
        client = superlink_client()
        online = wait_nodes_online(client, args.nodes, site.stack.check)
        print(f"{args.nodes} nodes online after {online:.1f}s", flush=True)

        cfg = TrainConfig(local_steps=args.local_steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=2e-3)
        node_cfg = replace(cfg, threads=1)  # as the demo: nodes share this machine's cores
        campaign = campaign_create(
            name="overhead benchmark",
            base_model=base,
            data_task="python-docs",
            heldout_path=str(corpus / "heldout.jsonl"),
            train_config=node_cfg.to_run_config(),
            num_rounds=1,
            min_nodes=args.nodes,
        )
        session = staff_session(site.url)
        sent, recorded = launch_and_time(session, site, campaign)
        print(f"console launch → round 1 recorded: {recorded - sent:.1f}s", flush=True)
        campaign.refresh_from_db()
        completed = wait_completed(campaign, site.stack.check)
        run = control.run_record(client, int(campaign.flwr_run_id))
        events = journal(campaign_output_dir(campaign) / "server")
        scored = event(events, "evaluated", 1)
        evaluation = scored["timings"]["evaluated"] - scored["timings"]["evaluate_started"]
        publish = completed - scored["time"]  # from the evaluation's report to the published release

    # Right after, in the same run, with the platform's processes stopped: nothing else competes for the cores,
    # and it gets all of them (torch may count only physical cores), as the nodes together had.
    bare = bare_loop(model, corpus, names, replace(cfg, threads=len(os.sched_getaffinity(0))))
    parts = breakdown(sent, recorded, run, events)
    r1 = event(events, "round", 1)
    starts = first_step(sent, events)
    body = report(parts, recorded - sent, bare, recorded - r1["timings"]["sent"], evaluation, publish, starts, args)
    title = "Platform overhead: one round through everything vs a bare PEFT loop"
    write_section("overhead", title, body, COMMAND, timer, dry_run=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
