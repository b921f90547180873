"""Benchmark: does federated refinement pay off? (not a test; run `make bench-quality`)

The demo corpus split non-IID by topic (federation/corpus.py) over N contributors, SmolLM2-135M, LoRA. Every arm gets
the same budget: S = N x rounds x local-steps optimizer steps of `batch-size` samples each, from the same fresh adapter.

- base: no training.
- node-K alone: S steps on contributor K's own data only (what a contributor gets without the platform).
- centralized: S steps on everyone's data pooled in one place (what the platform exists to avoid).
- federated FedAvg (plain): the product's real path without the web site: one SuperLink, N real SuperNodes, the real
  ServerApp/ClientApp; each node does local-steps per round at the campaign's lr, the server averages (weighted by
  samples) and the average is the new global.
- default: the same, with every setting the platform's default campaign has (federation.config's defaults: the
  learning-rate scaling rule, the server optimizer, the LoRA variant); its row is in bold.
- each option alone on top of plain FedAvg: node lr x N (the large-batch scaling rule), server momentum (FedAvgM),
  server Adam (FedAdam), exact LoRA merge (FFA-LoRA).
- default, equal compute per contributor: N x rounds rounds, so every node does as many steps as it did alone.
  The default row is this run's merged adapter after `rounds` rounds: a campaign of `rounds` rounds is the first
  `rounds` rounds of a longer one with the same settings (nothing a round does depends on how many follow), and
  scoring it from the longer run keeps the script within its 30 minutes on 2 cores.
- with --wire, only base and plain FedAvg with the adapter travelling in each transfer dtype (float32, float16,
  bfloat16; the server merges in float32 either way), side by side: what half the bytes cost in quality. Written
  to its own section.
- with --diagnose, pooled data in large batches (not the same step count): the same samples as every arm, in
  rounds x local-steps optimizer steps of N x batch-size samples, at the default campaign's node learning rate:
  about the most that averaging N nodes' updates could give (bench.quality_seeds runs it at every seed).

Each arm's adapter is evaluated here, with one function, on the whole held-out set (drawn from every topic) and on
each contributor's own topics within it. Losses are token-weighted means; perplexity = exp(loss).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench import REPO
from bench.flower_cluster import journal, run_to_end, start_cluster
from bench.report import Timer, write_section
from bench.site_stack import stop_on_signals
from federation import events, procs
from federation.artifacts import ADAPTER_WEIGHTS, round_folder
from federation.basemodel import prepare_smollm2
from federation.config import TRANSFER_DTYPES, AggregationConfig, ServerConfig, TrainConfig, WireConfig
from federation.corpus import build_demo_corpus, grouped_chunks
from federation.data import load_records
from federation.node_data import node_dataset
from federation.strategy import server_optimizer_text
from federation.task import Example, collate, encode_all, load_tokenizer, lora_model, set_adapter_state, train

COMMAND = "make bench-quality"
POOLED = "centralized (pooled data)"


@dataclass
class Arm:
    label: str
    steps: int
    samples: int
    loss: float = float("nan")
    by_topic: dict[str, float] = field(default_factory=dict)  # contributor name -> loss on that contributor's topics
    seconds: float = 0.0
    note: str = ""
    kind: str = ""  # federated arms: see Plan.kind; "bound": an in-process arm on pooled data that bounds them
    wire: str = ""  # federated arms: bytes per node per round each way, and the merged adapter's dtype


@dataclass
class Heldout:
    examples: list[Example]
    topic_of: list[str]  # topic group of each example
    owners: dict[str, set[str]]  # contributor -> its topic groups


@torch.no_grad()
def per_example_loss(model: torch.nn.Module, examples: list[Example], pad_id: int) -> list[tuple[float, int]]:
    """(summed token loss, labelled tokens) for each example, so any subset's mean can be formed afterwards."""
    model.eval()
    out: list[tuple[float, int]] = []
    for start in range(0, len(examples), 8):
        batch = collate(examples[start : start + 8], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :]
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
        ).view(labels.shape)
        for row in range(labels.size(0)):
            out.append((float(losses[row].sum()), int((labels[row] != -100).sum())))
    return out


def score(arm: Arm, model: torch.nn.Module, held: Heldout, pad_id: int) -> None:
    pairs = per_example_loss(model, held.examples, pad_id)

    def mean(keep: list[bool]) -> float:
        total = sum(s for (s, _), k in zip(pairs, keep, strict=True) if k)
        count = sum(n for (_, n), k in zip(pairs, keep, strict=True) if k)
        return total / count if count else float("nan")

    arm.loss = mean([True] * len(pairs))
    for owner, topics in held.owners.items():
        arm.by_topic[owner] = mean([t in topics for t in held.topic_of])


def load_heldout(corpus: Path, manifest: dict, model: Path, seq_len: int) -> Heldout:
    chunks, _, _ = grouped_chunks()
    group_of = {chunk: group for group, items in chunks.items() for chunk in items}
    records = load_records(corpus / "heldout.jsonl")
    kept = [r for r in records if r.text in group_of]
    examples = encode_all(load_tokenizer(str(model)), kept, seq_len)
    if len(examples) != len(kept):
        raise RuntimeError("a held-out record kept no token after truncation; raise --seq-len")
    owners = {name: {g.split("/")[0] for g in node["groups"]} for name, node in manifest["nodes"].items()}
    return Heldout(examples, [group_of[r.text] for r in kept], owners)


def in_process_arm(arm: Arm, model_path: Path, cfg: TrainConfig, data: list[Example], held: Heldout, pad: int) -> None:
    started = time.monotonic()
    model = lora_model(str(model_path), cfg)
    if arm.steps:
        result = train(model, data, replace(cfg, local_steps=arm.steps), pad, round_seed=1)
        arm.note = f"{len(data)} examples, final train loss {result.loss:.3f}"
    score(arm, model, held, pad)
    arm.seconds = time.monotonic() - started


@dataclass
class Plan:
    """One federated arm: the campaign settings it changes from plain FedAvg, and its rounds x local steps."""

    label: str
    rounds: int
    steps: int
    train: dict = field(default_factory=dict)  # TrainConfig fields (lr, lora_variant, max_lr_scale)
    aggregation: AggregationConfig = field(default_factory=lambda: PLAIN)
    kind: str = "option"  # "plain", "default", "option" or "equal compute"
    wire: WireConfig = field(default_factory=WireConfig)  # how the adapter travels (float32 unless an arm says)
    checkpoints: tuple[Checkpoint, ...] = ()  # earlier rounds of the same run, scored as arms of their own


@dataclass(frozen=True)
class Checkpoint:
    """The merged adapter after `rounds` rounds of a longer run, as the arm `label` (of kind `kind`): the campaign
    with the same settings and `rounds` rounds, since nothing a round does depends on how many rounds follow."""

    rounds: int
    label: str
    kind: str


KINDS = ["plain", "default", "option", "equal compute"]  # the table's order of federated rows (stable within a kind)

# Plain FedAvg: the merge is the new global, every node at the campaign's learning rate (no scaling).
PLAIN = AggregationConfig(server_optimizer="sgd", server_lr=1.0, server_momentum=0.0)
PLAIN_TRAIN = {"max_lr_scale": 1.0, "lora_variant": "lora"}


def default_label() -> str:
    """The platform's default campaign, in the words of its own settings (federation.config defaults)."""
    train, merging = TrainConfig(), AggregationConfig()
    parts = [merging.strategy if merging.strategy != "fedavg" else "FedAvg"]
    if train.max_lr_scale > 1:
        parts.append(f"node lr × nodes (≤ {train.max_lr_scale:g})")
    if merging.server_step:
        parts.append(server_optimizer_text(merging).split(" (")[0])
    if train.lora_variant != "lora":
        parts.append(train.lora_variant.upper() + "-LoRA")
    return "default: " + ", ".join(parts)


def default_train() -> dict:
    """The default campaign's node settings that differ from plain FedAvg's (federation.config's defaults)."""
    defaults = TrainConfig()
    return {"max_lr_scale": defaults.max_lr_scale, "lora_variant": defaults.lora_variant}


def node_lr_scale(nodes: int) -> float:
    """What the default campaign multiplies a node's learning rate by in a round of `nodes` (TrainConfig.round_lr)."""
    return min(float(nodes), TrainConfig().max_lr_scale)


def large_batch_label(args: argparse.Namespace) -> str:
    depth, batch = args.rounds * args.local_steps, args.nodes * args.batch_size
    return f"pooled, large batches ({depth} steps × {batch}, lr × {node_lr_scale(args.nodes):g})"


def large_batch_config(cfg: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Pooled data at the campaign's depth: each step on N x batch-size samples, at the default's node lr."""
    return replace(cfg, batch_size=args.nodes * args.batch_size, lr=cfg.lr * node_lr_scale(args.nodes))


def default_plan(args: argparse.Namespace) -> Plan:
    """The platform's default campaign at the benchmark's rounds x local steps."""
    return Plan(default_label(), args.rounds, args.local_steps, default_train(), AggregationConfig(), "default")


def plans(args: argparse.Namespace) -> list[Plan]:
    """Plain FedAvg, each option alone on top of plain FedAvg, and the default campaign at equal compute per
    contributor (every node does as many steps as a contributor alone did), whose round `rounds` is the platform's
    default campaign at equal total steps (Checkpoint)."""
    r, s, n = args.rounds, args.local_steps, args.nodes
    default = default_plan(args)
    equal = replace(
        default,
        label=f"default, equal compute per contributor ({n * r} rounds × {s} steps)",
        rounds=n * r,
        kind="equal compute",
        checkpoints=(Checkpoint(r, default.label, default.kind),),
    )
    return [
        Plan(f"federated FedAvg ({r} rounds × {s} steps)", r, s, dict(PLAIN_TRAIN), PLAIN, "plain"),
        Plan(f"node lr × {n} (scaling rule)", r, s, {**PLAIN_TRAIN, "max_lr_scale": float(n)}),
        Plan(f"server momentum {args.momentum:g} (FedAvgM)", r, s, dict(PLAIN_TRAIN),
             replace(PLAIN, server_momentum=args.momentum)),
        Plan(f"server Adam, eta {args.adam_eta:g} (FedAdam)", r, s, dict(PLAIN_TRAIN),
             replace(PLAIN, server_optimizer="adam", server_lr=args.adam_eta)),
        Plan("exact LoRA merge (FFA-LoRA)", r, s, {**PLAIN_TRAIN, "lora_variant": "ffa"}),
        equal,
    ]  # fmt: skip


def wire_plans(args: argparse.Namespace) -> list[Plan]:
    """Plain FedAvg with the adapter travelling in each transfer dtype, float32 (exact) first."""
    r, s = args.rounds, args.local_steps
    return [
        Plan(f"federated FedAvg, {dtype} on the wire", r, s, dict(PLAIN_TRAIN), PLAIN, "plain", WireConfig(dtype))
        for dtype in TRANSFER_DTYPES
    ]


def federated(plan: Plan, args, address: str, check, node_cfg: TrainConfig, server: ServerConfig, root: Path,
              held: Heldout, model_path: Path, pad: int) -> list[Arm]:  # fmt: skip
    """The plan's run through the real SuperLink and SuperNodes: an arm for each of its checkpoints, then its own."""
    cfg = replace(node_cfg, local_steps=plan.steps, **plan.train)
    out = root / f"federated-{len(list(root.glob('federated-*')))}"
    wanted = [*plan.checkpoints, Checkpoint(plan.rounds, plan.label, plan.kind)]
    steps = [args.nodes * c.rounds * plan.steps for c in wanted]
    arms = [Arm(c.label, n, n * args.batch_size, kind=c.kind) for c, n in zip(wanted, steps, strict=True)]
    federated_arm(arms, [c.rounds for c in wanted], address, cfg, replace(server, num_rounds=plan.rounds),
                  plan.aggregation, out, held, model_path, pad, check, plan.wire)  # fmt: skip
    for arm in arms:
        print(f"  {arm.label:30s} loss {arm.loss:.4f}  ({arm.seconds:.0f}s)", flush=True)
    return arms


def federated_arm(arms: list[Arm], after: list[int], address: str, cfg: TrainConfig, server: ServerConfig,
                  merging: AggregationConfig, out: Path, held: Heldout, model_path: Path, pad: int, check,
                  wire: WireConfig | None = None) -> None:  # fmt: skip
    """One run; `arms[i]` is scored on the merged adapter after round `after[i]` (the last: the whole run)."""
    heldout = out.parent / "corpus" / "heldout.jsonl"
    run_config = {**cfg.to_run_config(), **server.to_run_config(), **merging.to_run_config(),
                  **(wire or WireConfig()).to_run_config(), "output-dir": str(out), "base-model-path": str(model_path),
                  "heldout-path": str(heldout)}  # fmt: skip
    seconds = run_to_end(address, run_config, arms[-1].label, timeout=1800, check=check)
    logged = journal(out)
    rounds = {e["round"]: e for e in logged if e["type"] == events.EVENT_ROUND}
    evaluated = {e["round"]: e for e in logged if e["type"] == events.EVENT_EVALUATED}
    # Scored here with every core (the nodes are idle now); their config's one thread is for training side by side.
    model = lora_model(str(model_path), replace(cfg, threads=len(os.sched_getaffinity(0))))
    from safetensors.torch import load_file

    for arm, number in zip(arms, after, strict=True):
        started = time.monotonic()
        state = load_file(str(round_folder(out, number) / ADAPTER_WEIGHTS))
        set_adapter_state(model, state)
        score(arm, model, held, pad)
        # Every arm: the run's wall time up to its round's merge (the events' clock) and its scoring here, as the
        # in-process arms count theirs; an earlier round's arm does not pay for the rounds after it.
        arm.seconds = seconds - (logged[-1]["time"] - rounds[number]["time"]) + time.monotonic() - started
        # No arm's adapter may grow on the wire: what each node received and sent in the arm's last round, and the
        # dtype the server saved the merged adapter in (a server optimizer must not leave it in float64).
        reports = [n for n in rounds[number]["nodes"] if not n["error"]]
        down = max(int(n["metrics"][events.BYTES_DOWN]) for n in reports)
        up = max(int(n["metrics"][events.BYTES_UP]) for n in reports)
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state.values()})
        arm.wire = f"{down / 1e6:.2f} / {up / 1e6:.2f} MB, {'/'.join(dtypes)}"
        arm.note = f"{number} rounds x {cfg.local_steps} steps x {server.min_nodes} nodes"
        if number < server.num_rounds:
            arm.note += f" (rounds 1-{number} of the {server.num_rounds}-round run below)"
        own = evaluated.get(number)
        if own is not None:
            arm.note += f"; server's own eval (first {server.max_heldout_records} held-out) {own['eval_loss']:.3f}"


def gain(arm: Arm, base: Arm, pooled: Arm) -> float:
    """The share of pooled training's improvement over the base model that `arm` reaches, in percent."""
    return (base.loss - arm.loss) / (base.loss - pooled.loss) * 100


def table(arms: list[Arm], owners: list[str], held: Heldout) -> str:
    by = {a.label: a for a in arms}
    base, pooled = by["base model"], by[POOLED]
    counts = {o: sum(t in held.owners[o] for t in held.topic_of) for o in owners}
    head = "| arm | optimizer steps | samples | held-out loss | perplexity | % of pooled gain |"
    head += "".join(f" on {o}'s topics ({counts[o]}) |" for o in owners)
    head += " wire per node per round (down / up), merged dtype | wall s |"
    lines = [head, "|---" * (8 + len(owners)) + "|"]
    for a in arms:
        label = f"**{a.label}**" if a.kind == "default" else a.label
        row = f"| {label} | {a.steps} | {a.samples} | {a.loss:.4f} | {math.exp(a.loss):.2f} | "
        row += f"{gain(a, base, pooled):.0f}% |"
        row += "".join(f" {a.by_topic[o]:.4f} |" for o in owners) + f" {a.wire or '–'} | {a.seconds:.0f} |"
        lines.append(row)
    return "\n".join(lines)


def _verdict(arm: Arm, alone: list[Arm], base: Arm, pooled: Arm) -> str:
    beats = all(arm.loss < a.loss for a in alone)
    return (
        f"{arm.loss:.4f}: {'beats' if beats else 'does NOT beat'} every contributor alone and reaches "
        f"{gain(arm, base, pooled):.0f}% of pooled training's gain over the base model"
    )


def findings(arms: list[Arm], owners: list[str]) -> str:
    by = {a.label: a for a in arms}
    base, pooled = by["base model"], by[POOLED]
    plain = next(a for a in arms if a.kind == "plain")
    default = next(a for a in arms if a.kind == "default")
    equal = next(a for a in arms if a.kind == "equal compute")
    options = [a for a in arms if a.kind == "option"]
    alone = [by[f"{o} alone"] for o in owners]
    best_alone = min(alone, key=lambda a: a.loss)
    targets = [
        ("the default campaign beats every contributor alone", all(default.loss < a.loss for a in alone)),
        ("it reaches ≥ 95% of pooled training's gain", gain(default, base, pooled) >= 95),
        ("at equal compute per contributor it beats pooled training", equal.loss < pooled.loss),
    ]
    lines = [
        f"- **The default campaign** ({default.label}) at equal total steps: {_verdict(default, alone, base, pooled)} "
        f"(best contributor alone: {best_alone.label}, {best_alone.loss:.4f}; pooled {pooled.loss:.4f}).",
        f"- Plain FedAvg: {_verdict(plain, alone, base, pooled)}.",
        *[f"- {a.label}, alone on top of plain FedAvg: {_verdict(a, alone, base, pooled)}." for a in options],
        f"- Equal compute per contributor ({equal.label}; {equal.steps} steps in all, {equal.steps // len(owners)} "
        f"per node, as many as each did alone): {equal.loss:.4f}, "
        f"{'better' if equal.loss < pooled.loss else 'NOT better'} than pooled training at {pooled.steps} steps "
        f"({pooled.loss:.4f}).",
        "- Targets (issue 15): " + "; ".join(f"{t}: {'met' if ok else 'NOT met'}" for t, ok in targets) + ".",
    ]
    for o, a in zip(owners, alone, strict=True):
        others = [x for x in owners if x != o]

        def mean_others(arm: Arm, others: list[str] = others) -> float:
            return sum(arm.by_topic[x] for x in others) / len(others)

        lines.append(
            f"- {o} alone: {a.by_topic[o]:.4f} on its own topics (plain FedAvg {plain.by_topic[o]:.4f}, default "
            f"{default.by_topic[o]:.4f}); {mean_others(a):.4f} on the others' topics (plain FedAvg "
            f"{mean_others(plain):.4f}, default {mean_others(default):.4f})."
        )
    return "\n".join(lines)


def wire_table(arms: list[Arm]) -> str:
    """Base and plain FedAvg per transfer dtype: loss, the change against float32, the bytes each way."""
    base, exact = arms[0], arms[1]
    lines = [
        "| arm | held-out loss | vs float32 on the wire | gain over base kept | MB down / up per node, merged dtype |",
        "|---|---|---|---|---|",
        f"| {base.label} | {base.loss:.4f} | | | |",
    ]
    for arm in arms[1:]:
        kept = (base.loss - arm.loss) / (base.loss - exact.loss) * 100
        lines.append(f"| {arm.label} | {arm.loss:.4f} | {arm.loss - exact.loss:+.4f} | {kept:.1f}% | {arm.wire} |")
    return "\n".join(lines)


def wire_findings(arms: list[Arm]) -> str:
    exact = arms[1]
    worst = max(arms[2:], key=lambda a: abs(a.loss - exact.loss))
    return (
        f"**What this shows.** Plain FedAvg with the adapter in float32 on the wire ends at {exact.loss:.4f}; "
        + "; ".join(f"{a.label.split(', ')[1]} {a.loss:.4f} ({a.loss - exact.loss:+.4f})" for a in arms[2:])
        + f". The largest change is {abs(worst.loss - exact.loss):.4f} ({worst.label.split(', ')[1]}), "
        f"for half the bytes each way (the server merges in float32 and saves float32 either way)."
    )


def parser() -> argparse.ArgumentParser:
    """The arguments every quality bench shares (bench.quality_seeds adds its own)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local HF checkpoint (default: SmolLM2-135M-Instruct, prepared under var/)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    # 6 (not 8) keeps the whole script under 30 minutes on 2 cores; pass 8 for the earlier, longer setting.
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--max-chunks", type=int, default=120, help="records per contributor (as in the demo)")
    parser.add_argument("--heldout", type=int, default=0, help="cap on held-out records (0: all, ~10%% of corpus)")
    parser.add_argument("--out", default=str(REPO / "var" / "bench" / "quality"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    return parser


@dataclass
class Setting:
    """What every arm shares: the corpus split over the contributors, the model, the held-out set."""

    out: Path
    model: Path
    owners: list[str]
    cfg: TrainConfig  # in this process: every core; the nodes get one thread each (node_cfg)
    held: Heldout
    data: dict  # contributor -> its NodeDataset
    pad: int
    budget: int  # optimizer steps per arm
    samples: int

    def examples(self, arm: Arm) -> list[Example]:
        """An in-process arm's training data: a contributor's own (`node-K alone`), or everyone's pooled."""
        owner = arm.label.removesuffix(" alone")
        return self.data[owner].train if owner in self.data else [e for o in self.owners for e in self.data[o].train]

    def describe(self, args: argparse.Namespace) -> str:
        return (
            f"Base model `{self.model.name}`, LoRA r {self.cfg.lora_r} on {self.cfg.target_modules}, lr {self.cfg.lr}, "
            f"batch {self.cfg.batch_size}, seq-len {self.cfg.seq_len}; {args.nodes} contributors with "
            f"{args.max_chunks} records each on 2 topic groups of their own (non-IID); held-out: "
            f"{len(self.held.examples)} records from every topic. "
        )


def prepare(args: argparse.Namespace) -> Setting:
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    model = Path(args.model).resolve() if args.model else REPO / "var" / "models" / "smollm2-135m-instruct"
    if not args.model:
        prepare_smollm2(model, REPO / "var" / "cache")
    manifest = build_demo_corpus(out / "corpus", n_contributors=args.nodes, max_chunks_per_node=args.max_chunks,
                                 max_heldout=args.heldout or None)  # fmt: skip
    owners = list(manifest["nodes"])
    # In this process: every core (torch may count only physical cores); the nodes below get one thread each.
    cores = len(os.sched_getaffinity(0))
    cfg = TrainConfig(local_steps=args.local_steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                      threads=cores)  # fmt: skip
    held = load_heldout(out / "corpus", manifest, model, args.seq_len)
    data = {o: node_dataset(str(out / "corpus" / o), str(model), cfg) for o in owners}
    budget = args.nodes * args.rounds * args.local_steps
    return Setting(out, model, owners, cfg, held, data, data[owners[0]].pad_id, budget, budget * args.batch_size)


def node_config(cfg: TrainConfig, args: argparse.Namespace) -> tuple[TrainConfig, ServerConfig]:
    """The nodes share this machine's cores: one torch thread each, as in the demo. Their own validation and the
    server's evaluation only feed the console; every arm is scored here, on the whole held-out set, so those run
    on a few records to spend the time on training."""
    node_cfg = replace(cfg, threads=1, max_eval_records=4)
    return node_cfg, ServerConfig(num_rounds=args.rounds, min_nodes=args.nodes, max_heldout_records=8)


def quality_parser() -> argparse.ArgumentParser:
    """This script's arguments: the shared ones and its arms' own."""
    parser_ = parser()
    parser_.add_argument(
        "--momentum",
        type=float,
        default=AggregationConfig().server_momentum or 0.5,
        help="the server momentum arm's momentum (default: the default campaign's)",
    )
    parser_.add_argument("--adam-eta", type=float, default=0.01, help="the server Adam arm's eta")
    parser_.add_argument("--diagnose", action="store_true", help="also pooled data in large batches (see above)")
    parser_.add_argument("--wire", action="store_true", help="only base and FedAvg per transfer dtype (see above)")
    return parser_


def main() -> int:
    args = quality_parser().parse_args()
    timer = Timer()
    stop_on_signals()  # a kill still stops the SuperLink and nodes below

    setting = prepare(args)
    out, model, owners, cfg = setting.out, setting.model, setting.owners, setting.cfg
    held, pad, budget, samples = setting.held, setting.pad, setting.budget, setting.samples
    print(f"{len(owners)} contributors, {len(held.examples)} held-out records, {budget} steps per arm", flush=True)

    arms = [Arm("base model", 0, 0)]
    if not args.wire:
        arms += [Arm(f"{o} alone", budget, samples) for o in owners]
        arms += [Arm(POOLED, budget, samples)]
    depth = args.rounds * args.local_steps
    if args.diagnose:
        arms += [Arm(large_batch_label(args), depth, samples, kind="bound")]
    for arm in arms:
        arm_cfg = large_batch_config(cfg, args) if arm.kind == "bound" else cfg
        in_process_arm(arm, model, arm_cfg, setting.examples(arm), held, pad)
        print(f"  {arm.label:30s} loss {arm.loss:.4f}  ({arm.seconds:.0f}s)", flush=True)

    node_cfg, server = node_config(cfg, args)
    with procs.Supervisor(out / "logs") as sup:
        address = start_cluster(sup, out, {o: out / "corpus" / o for o in owners}, model)
        campaigns = []
        for plan in wire_plans(args) if args.wire else plans(args):
            campaigns += federated(plan, args, address, sup.check, node_cfg, server, out, held, model, pad)
    arms += sorted(campaigns, key=lambda a: KINDS.index(a.kind))  # the default's row after plain FedAvg's

    described = setting.describe(args)
    if args.wire:
        body = (
            described + f"Plain FedAvg, {args.rounds} rounds × {args.local_steps} local steps per node, the same "
            f"initial adapter; only how the adapter travels differs.\n\n{wire_table(arms)}\n\n{wire_findings(arms)}"
        )
        title = "Refinement quality by transfer precision: FedAvg with float32, float16 and bfloat16 on the wire"
        write_section("quality-wire", title, body, "make bench-quality-wire", timer, dry_run=args.no_write)
        return 0

    body = (
        described
        + f"Every arm but the equal-compute one: {budget} optimizer steps, {samples} samples; all from the same "
        "initial adapter.\n\n"
        f"{table(arms, owners, held)}\n\n"
        "Notes: " + "; ".join(f"{a.label}: {a.note}" for a in arms if a.note) + ".\n\n" + findings(arms, owners)
    )
    title = "Refinement quality: federated vs alone vs pooled"
    write_section("quality", title, body, COMMAND, timer, dry_run=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
