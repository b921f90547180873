"""Benchmark: robust aggregation and central DP on real Flower processes (not a test; run `make bench-aggregation`).

4 real SuperNodes (`python -m federation node`) on the tiny random Llama (testbed/tiny.py), one SuperLink, the
real ServerApp, runs submitted through the Control API. No web site: the ServerApp journals each round to
events.jsonl (its report URL is empty) and this script reads the journal.

Phase 1 (clean): 4 honest nodes. FedAvg (the reference), then FedAvg under central DP at two noise levels.
Phase 2 (hostile): node-4 restarted as `python -m testbed.hostile_node --attack scale` (sends its update x50).
FedAvg, FedAvg + norm-ratio bound, FedMedian, FedTrimmedAvg, MultiKrum. Prints one table of held-out loss after N
rounds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import REPO
from bench.flower_cluster import journal, run_to_end, start_cluster
from federation import procs
from federation.config import AggregationConfig, ServerConfig, TrainConfig
from federation.corpus import build_demo_corpus
from testbed.tiny import build_tiny_checkpoint

NODES = ["node-1", "node-2", "node-3", "node-4"]
HOSTILE = "node-4"


@dataclass
class Row:
    phase: str
    label: str
    agg: dict
    final_loss: float | None = None
    base_loss: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    refused: int = 0
    seconds: float = 0.0


def scenarios(clip: float, noises: tuple[float, float]) -> list[Row]:
    low, high = noises
    off = {"max-norm-ratio": 0.0}  # the ratio rule is on by default; these rows measure the strategies without it
    dp = {**off, "dp-clipping-norm": clip}
    return [
        Row("clean", "FedAvg (clean run, no attack)", off),
        Row("clean", f"FedAvg + central DP, noise {low:g}", {**dp, "dp-noise-multiplier": low}),
        Row("clean", f"FedAvg + central DP, noise {high:g}", {**dp, "dp-noise-multiplier": high}),
        Row("hostile", "FedAvg", off),
        Row("hostile", "FedAvg + norm-ratio bound (5x median)", {"max-norm-ratio": 5.0}),
        Row("hostile", "FedMedian", {**off, "strategy": "fedmedian"}),
        Row("hostile", "FedTrimmedAvg (beta 0.25)", {**off, "strategy": "fedtrimmedavg", "trim-beta": 0.25}),
        Row("hostile", "MultiKrum (f=1, keep 3)", {**off, "strategy": "multikrum", "krum-malicious": 1}),
    ]


def run_one(address: str, row: Row, train: TrainConfig, server: ServerConfig, out: Path, timeout: float,
            paths: dict[str, str]) -> None:  # fmt: skip
    """`paths`: base-model-path and heldout-path, for the ServerApp's paths file (never in the run config)."""
    agg = AggregationConfig.from_run_config(row.agg)
    run_config = {**train.to_run_config(), **agg.to_run_config(), **server.to_run_config(), "output-dir": str(out),
                  **paths}  # fmt: skip
    row.seconds = run_to_end(address, run_config, row.label, timeout)
    collect(row, out)
    print(
        f"  {row.phase:7s} {row.label:40s} loss {row.base_loss:.4f} -> {row.final_loss:.4f}  "
        f"eps {row.epsilon}  refused {row.refused}  ({row.seconds:.0f}s)",
        flush=True,
    )


def collect(row: Row, out: Path) -> None:
    """Read one run's results from the ServerApp's journal."""
    events = journal(out)
    rounds = [e for e in events if e["type"] == "round"]
    scored = [e for e in events if e["type"] == "evaluated"]
    row.base_loss, row.final_loss = scored[0]["eval_loss"], scored[-1]["eval_loss"]
    row.epsilon, row.delta = rounds[-1].get("epsilon"), rounds[-1].get("delta")
    row.refused = sum(1 for e in rounds for n in e["nodes"] if n.get("rejected"))


def table(rows: list[Row], rounds: int, train: TrainConfig, delta: float) -> str:
    clean, base = rows[0].final_loss, rows[0].base_loss
    lines = [
        f"Held-out loss of the tiny model after {rounds} rounds, 4 nodes (node-4 sends its update x50 in the hostile "
        f"rows); base model loss {base:.4f}. local-steps {train.local_steps}, lr {train.lr}, "
        f"batch {train.batch_size}, seq-len {train.seq_len}, LoRA r {train.lora_r} on attention and MLP.",
        "",
        f"| node-4 | aggregation | held-out loss | vs clean run | clean run's improvement kept | refused updates "
        f"| ε (δ = {delta:g}) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = (r.final_loss - clean) / clean * 100
        kept = (base - r.final_loss) / (base - clean) * 100
        eps = "–" if r.epsilon is None else f"{r.epsilon:.2f}"
        hostile = "x50 (scale)" if r.phase == "hostile" else "honest"
        lines.append(
            f"| {hostile} | {r.label} | {r.final_loss:.4f} | {change:+.2f}% | {kept:.0f}% | {r.refused} | {eps} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "var" / "bench" / "aggregation"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--clip", type=float, default=0.0, help="DP clipping norm (0: the clean run's median norm)")
    parser.add_argument("--noise", type=float, nargs=2, default=(0.3, 1.0), help="two DP noise multipliers")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--table-only", action="store_true", help="print the table of an earlier run in --out")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    if not args.table_only:
        shutil.rmtree(out, ignore_errors=True)
    model = build_tiny_checkpoint(out / "model")
    corpus = out / "corpus"
    if not args.table_only:
        build_demo_corpus(corpus, n_contributors=len(NODES), max_chunks_per_node=48, max_heldout=32)
    # LoRA on the MLP too: on a random tiny model, attention-only adapters barely move the held-out loss.
    train = TrainConfig(
        local_steps=args.local_steps,
        lr=args.lr,
        seq_len=64,
        batch_size=4,
        threads=1,
        max_eval_records=8,
        target_modules="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    )
    server = ServerConfig(
        num_rounds=args.rounds,
        min_nodes=len(NODES),
        max_heldout_records=32,
    )
    rows = scenarios(args.clip, tuple(args.noise))
    for phase in () if args.table_only else ("clean", "hostile"):
        print(f"phase {phase}: starting SuperLink and {len(NODES)} nodes", flush=True)
        with procs.Supervisor(out / phase / "logs") as sup:
            data = {name: corpus / name for name in NODES}
            address = start_cluster(sup, out / phase, data, model, "scale" if phase == "hostile" else "", HOSTILE)
            for i, row in enumerate(r for r in rows if r.phase == phase):
                if row.agg.get("dp-clipping-norm") == 0.0:
                    # Clip at the honest updates' typical size: clipping then bounds sensitivity without
                    # throwing most of the signal away.
                    row.agg["dp-clipping-norm"] = median_norm(out / "clean" / "run-0")
                paths = {"base-model-path": str(model), "heldout-path": str(corpus / "heldout.jsonl")}
                run_one(address, row, train, server, out / phase / f"run-{i}", args.timeout, paths)
                sup.check()
    if args.table_only:
        for phase in ("clean", "hostile"):
            for i, row in enumerate(r for r in rows if r.phase == phase):
                collect(row, out / phase / f"run-{i}")
    delta = AggregationConfig().dp_delta
    print()
    print(table(rows, args.rounds, train, delta))
    return 0


def median_norm(run_dir: Path) -> float:
    events = journal(run_dir)
    norms = sorted(n["update_norm"] for e in events if e["type"] == "round" for n in e["nodes"] if n["update_norm"])
    return round(norms[len(norms) // 2], 4)


if __name__ == "__main__":
    sys.exit(main())
