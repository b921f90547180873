"""Benchmark: does a smarter merge close the gap to 95%? (not a test; run `make bench-quality-merges`)

bench-quality's default campaign averages its nodes' adapters (FedAvg, weighted by examples) and then takes Flower's
FedAvgM step. Two published merge rules change what is done with the same replies:

- TIES disjoint mean (Yadav et al., 2023, "TIES-Merging"): per coordinate, the sign of the weighted sum of the
  nodes' updates is elected and only the nodes that agree with it are averaged, so coordinates where nodes disagree
  keep full-size steps instead of cancelling (no trimming: every coordinate of every update takes part).
- FedExP (Jhunjhunwala et al., 2023): the server extrapolates the averaged update by
  max(1, mean ||update_i||^2 / (2 ||mean update||^2)), which grows when the nodes' updates disagree.

Running every rule as a real campaign would take a cluster each; instead the rounds are emulated in this process: the
same `train` each node runs, on each node's own data, with the round's seed and the default's learning-rate scaling,
the merge by the rule under test, then Flower's own FedAvgM step (federation.server_optimizer, as the ServerApp takes
it). The emulation's FedAvg arm is checked against the real default campaign (real SuperLink and SuperNodes) side by
side in the same run: the table shows both, and how far apart they are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from bench.flower_cluster import start_cluster
from bench.quality import (
    Arm,
    Setting,
    default_plan,
    federated,
    in_process_arm,
    node_config,
    node_lr_scale,
    parser,
    prepare,
    score,
)
from bench.quality import gain as share_of_gain
from bench.report import Timer, write_section
from bench.site_stack import stop_on_signals
from federation import procs
from federation.config import AggregationConfig
from federation.server_optimizer import ServerOptimizer
from federation.task import get_adapter_state, lora_model, set_adapter_state, train

COMMAND = "make bench-quality-merges"

Tensors = dict[str, np.ndarray]
Rule = Callable[[Tensors, list[Tensors], list[float]], Tensors]  # (global, replies, weights) -> merged


def fedavg(start: Tensors, replies: list[Tensors], weights: list[float]) -> Tensors:
    """The weighted mean of the replies (what the default campaign's FedAvg computes)."""
    total = sum(weights)
    return {k: sum(w * r[k] for r, w in zip(replies, weights, strict=True)) / total for k in start}


def ties(start: Tensors, replies: list[Tensors], weights: list[float]) -> Tensors:
    """TIES disjoint mean of the updates (reply - global): per coordinate, the weighted mean over the nodes whose
    update has the sign of the weighted sum; a coordinate no node moved stays where it was."""
    out = {}
    for k, x in start.items():
        d = np.stack([r[k] - x for r in replies])
        w = np.asarray(weights, dtype=d.dtype).reshape(-1, *([1] * x.ndim))
        agree = (np.sign(d) == np.sign((w * d).sum(0))) & (d != 0)
        total = (w * agree).sum(0)
        out[k] = x + np.where(total > 0, (w * d * agree).sum(0) / np.where(total > 0, total, 1), 0)
    return out


def fedexp(start: Tensors, replies: list[Tensors], weights: list[float]) -> Tensors:
    """FedExP: the weighted mean update scaled by max(1, mean squared update norm / (2 x squared mean norm))."""
    mean = fedavg(start, replies, weights)
    total = sum(weights)
    spread = sum(
        w * sum(float(((r[k] - start[k]) ** 2).sum()) for k in start) for r, w in zip(replies, weights, strict=True)
    )
    moved = sum(float(((mean[k] - start[k]) ** 2).sum()) for k in start)
    eta = max(1.0, spread / total / (2 * moved)) if moved > 0 else 1.0
    return {k: start[k] + eta * (mean[k] - start[k]) for k in start}


RULES: dict[str, Rule] = {"FedAvg": fedavg, "TIES disjoint mean": ties, "FedExP": fedexp}


def emulate(setting: Setting, rule: Rule, rounds: int, steps: int, nodes: int) -> Arm:
    """The default campaign's rounds in this process: each node trains from the global as its ClientApp would, the
    rule merges, Flower's FedAvgM (the default's server step) moves the global; scored like every other arm."""
    merging = AggregationConfig()
    opt = ServerOptimizer.from_config(merging)
    cfg = replace(setting.cfg, local_steps=steps, lr=setting.cfg.lr * node_lr_scale(nodes))
    model = lora_model(str(setting.model), setting.cfg)
    start = {k: v.numpy().copy() for k, v in get_adapter_state(model).items()}
    for campaign_round in range(1, rounds + 1):
        replies, weights = [], []
        for owner in setting.owners:
            set_adapter_state(model, {k: _torch(v) for k, v in start.items()})
            train(model, setting.data[owner].train, cfg, setting.pad, round_seed=campaign_round)
            replies.append({k: v.numpy().copy() for k, v in get_adapter_state(model).items()})
            weights.append(float(len(setting.data[owner].train)))
        merged = rule(start, replies, weights)
        if opt is not None:
            stepped = opt.step(_record(start), _record(merged))
            merged = {k: stepped[k].numpy() for k in start}
        start = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in merged.items()}
    set_adapter_state(model, {k: _torch(v) for k, v in start.items()})
    arm = Arm("", nodes * rounds * steps, nodes * rounds * steps * setting.cfg.batch_size)
    score(arm, model, setting.held, setting.pad)
    return arm


def _torch(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _record(tensors: Tensors) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in tensors.items()})


def main() -> int:
    args = parser().parse_args()
    timer = Timer()
    stop_on_signals()
    setting = prepare(args)
    base, pooled = Arm("base model", 0, 0), Arm("centralized (pooled data)", setting.budget, setting.samples)
    for arm in (base, pooled):
        in_process_arm(arm, setting.model, setting.cfg, setting.examples(arm), setting.held, setting.pad)
        print(f"  {arm.label:40s} loss {arm.loss:.4f}  ({arm.seconds:.0f}s)", flush=True)

    node_cfg, server = node_config(setting.cfg, args)
    plan = default_plan(args)
    with procs.Supervisor(setting.out / "logs") as sup:
        nodes = {o: setting.out / "corpus" / o for o in setting.owners}
        address = start_cluster(sup, setting.out, nodes, setting.model)
        [real] = federated(plan, args, address, sup.check, node_cfg, server, setting.out, setting.held, setting.model,
                         setting.pad)  # fmt: skip

    emulated: list[tuple[str, Arm]] = []  # (rule, its arm)
    for name, rule in RULES.items():
        started = time.monotonic()
        arm = emulate(setting, rule, args.rounds, args.local_steps, args.nodes)
        arm.label, arm.seconds = f"emulated, merged by {name}", time.monotonic() - started
        print(f"  {arm.label:40s} loss {arm.loss:.4f}  ({arm.seconds:.0f}s)", flush=True)
        emulated.append((name, arm))

    def share(arm: Arm) -> str:
        return f"{share_of_gain(arm, base, pooled):.1f}%"

    rows = [base, pooled, real, *(arm for _, arm in emulated)]
    lines = ["| arm | held-out loss | % of pooled gain | wall s |", "|---|---|---|---|"]
    lines += [f"| {a.label} | {a.loss:.4f} | {share(a) if a is not base else '0%'} | {a.seconds:.0f} |" for a in rows]
    mirror = emulated[0][1]
    best_rule, best = min(emulated, key=lambda e: e[1].loss)
    body = (
        setting.describe(args)
        + f"Every arm: {setting.budget} optimizer steps, {setting.samples} samples, {args.rounds} rounds × "
        f"{args.local_steps} steps per node for the campaigns; the default's node lr scaling and its FedAvgM step in "
        "every emulated arm; only the merge differs.\n\n" + "\n".join(lines) + "\n\n"
        f"- The emulation against the real path: merged by FedAvg it ends at {mirror.loss:.4f}, the real default "
        f"campaign at {real.loss:.4f} ({mirror.loss - real.loss:+.4f}).\n"
        f"- Best merge rule here: {best_rule} ({best.loss:.4f}, {share(best)} of pooled gain); "
        + "; ".join(f"{rule} {arm.loss - mirror.loss:+.4f} against FedAvg" for rule, arm in emulated[1:])
        + ".\n"
    )
    title = "Refinement quality by merge rule: FedAvg, TIES and FedExP on the default campaign's rounds"
    write_section("quality-merges", title, body, COMMAND, timer, dry_run=args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
