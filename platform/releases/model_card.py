"""README.md model card with Hugging Face YAML front matter."""

from __future__ import annotations

from typing import Any

import yaml
from django.conf import settings
from huggingface_hub import EvalResult
from huggingface_hub.repocard_data import eval_results_to_model_index

from campaigns.models import Campaign
from federation import events
from federation.config import TrainConfig

# How the Hub names the metrics (its model-index `type`s) and how the card's tables name them.
METRIC_TYPES = {events.CHRF: "chrf", events.EXACT_MATCH: "exact_match"}
METRIC_LABELS = {events.CHRF: "chrF", events.EXACT_MATCH: "exact match (%)"}
OVERALL = "all"  # the model-index config of the scores over every held-out record


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _contributors(rounds: list[dict[str, Any]]) -> list[str]:
    """One table row per node: the rounds it took part in and what it trained on (counts only).

    Nodes are named by pseudonym: Contributor has no opt-in field for publishing a real name yet.
    """
    per_node: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for n in r["nodes"]:
            if n["error"] or n.get("rejected"):  # refused updates were not merged
                continue
            row = per_node.setdefault(n["node"], {"rounds": [], "samples": 0, "tokens": 0})
            row["rounds"].append(str(r["round"]))
            row["samples"] += n["samples"] or 0
            row["tokens"] += n["tokens"] or 0
    lines = ["| contributor node | rounds | samples (sum over rounds) | tokens |", "|---|---|---|---|"]
    for node, row in sorted(per_node.items()):
        lines.append(f"| {node} | {', '.join(row['rounds'])} | {row['samples']} | {row['tokens']} |")
    return lines


def _trust(provenance: dict[str, Any]) -> list[str]:
    """How updates were checked and merged for this campaign, and the privacy it spent (if central DP was on)."""
    refused = sum(r.get("rejected") or 0 for r in provenance["rounds"])
    lines = [
        f"Merging for this campaign: {provenance['campaign']['aggregation']}. Every update was first checked "
        f"(tensor names, shapes, dtypes, finite values, norm bound); {refused} update(s) were refused and not merged.",
        "",
    ]
    privacy = provenance.get("privacy")
    if privacy:
        eps = "n/a" if privacy["epsilon"] is None else f"{privacy['epsilon']:.3f}"
        lines += [
            "### Differential privacy",
            "",
            f"**ε = {eps} at δ = {privacy['delta']:g}** (client-level, over all rounds): {privacy['mechanism']}, "
            f"noise multiplier {privacy['noise_multiplier']:g}, clipping norm {privacy['clipping_norm']:g}.",
            "",
        ]
    return lines


def _eval_results(campaign: Campaign, last: dict[str, Any]) -> list[EvalResult]:
    """The last round's held-out results, overall and per group, as the Hub's model-index entries: one dataset
    config per group (e.g. a language), each with its loss and the campaign's generation metrics."""
    dataset = {
        "task_type": "text-generation",
        "task_name": "Text generation (held-out answers)",
        "dataset_type": campaign.data_task,
        "dataset_split": "heldout",
    }
    label = f"round {last['round']}"
    results = []
    rows = [(OVERALL, {"loss": last["eval_loss"], **(last.get("task_metrics") or {})})]
    rows += sorted((last.get("groups") or {}).items())
    for group, values in rows:
        named = {"dataset_name": f"{campaign.data_task} held-out ({group})", "dataset_config": group}
        if values.get(events.GROUP_LOSS) is not None:
            results.append(
                EvalResult(**dataset, **named, metric_type="loss", metric_value=round(values["loss"], 4),
                           metric_name=f"held-out loss ({label})")
            )  # fmt: skip
        for metric, kind in METRIC_TYPES.items():
            if values.get(metric) is not None:
                results.append(
                    EvalResult(**dataset, **named, metric_type=kind, metric_value=round(values[metric], 2),
                               metric_name=f"{METRIC_LABELS[metric]} ({label})")
                )  # fmt: skip
    return results


def _model_index(campaign: Campaign, repo_id: str, rounds: list[dict[str, Any]]) -> list[str]:
    """Front-matter lines of the Hub's `model-index` (what the Hub renders as evaluation results)."""
    results = _eval_results(campaign, rounds[-1]) if rounds else []
    if not results:
        return []
    index = eval_results_to_model_index(repo_id, results)
    return yaml.safe_dump({"model-index": index}, sort_keys=False, allow_unicode=True).splitlines()


def _change(before: float | None, after: float | None, digits: int) -> str:
    if before is None and after is None:
        return "n/a"
    text = lambda v: "n/a" if v is None else f"{v:.{digits}f}"  # noqa: E731
    return f"{text(before)} → {text(after)}"


def _per_group(provenance: dict[str, Any]) -> list[str]:
    """Base model (round 0) against the last round, per held-out group and overall, when the campaign measured
    more than the overall loss."""
    rounds = provenance["rounds"]
    evaluation = provenance["campaign"].get("evaluation_config") or {}
    if not rounds:
        return []
    first, last = rounds[0], rounds[-1]
    metrics = [m for m in events.TASK_METRICS if m in (last.get("task_metrics") or {})]
    groups = sorted(set(first.get("groups") or {}) | set(last.get("groups") or {}))
    if not metrics and not groups:
        return []
    header = ["held-out group", "loss", *(METRIC_LABELS[m] for m in metrics), "records"]
    lines = [
        f"### Per group: base model (round {first['round']}) → round {last['round']}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for group in [*groups, OVERALL]:
        if group == OVERALL:
            a = {"loss": first["eval_loss"], **(first.get("task_metrics") or {})}
            b = {"loss": last["eval_loss"], **(last.get("task_metrics") or {}), "records": last.get("task_records")}
        else:
            a, b = (first.get("groups") or {}).get(group, {}), (last.get("groups") or {}).get(group, {})
        cells = [f"**{group}**" if group == OVERALL else group, _change(a.get("loss"), b.get("loss"), 4)]
        cells += [_change(a.get(m), b.get(m), 1) for m in metrics]
        cells.append(str(b.get("records") or "n/a"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Generation metrics score greedy answers of at most "
        f"{evaluation.get('task-max-new-tokens', 'a bounded number of')} new tokens against each held-out record's own "
        "answer (chrF: sacrebleu's character n-gram F-score; exact match: % reproduced exactly). The same results "
        "are in this card's `model-index` metadata and in `provenance.json`.",
        "",
    ]
    return lines


def _notes(campaign: Campaign) -> list[str]:
    """Staff's free text (edited in the console before publishing), as its own section."""
    notes = (campaign.card_notes or "").strip()
    return ["## Notes from the maintainers", "", notes, ""] if notes else []


def render_model_card(campaign: Campaign, repo_id: str, provenance: dict[str, Any]) -> str:
    base = campaign.base_model
    rounds = provenance["rounds"]
    before, after = rounds[0]["eval_loss"], rounds[-1]["eval_loss"]
    nodes = sorted({n["node"] for r in rounds for n in r["nodes"] if not n["error"] and not n.get("rejected")})
    cfg = campaign.train_config
    merging = provenance["campaign"]
    # Read as the launch reads it (defaults filled in), so a key the stored config lacks is described as it ran.
    train = TrainConfig.from_run_config(cfg)
    lines = [
        "---",
        f"base_model: {base.hf_id}",
        "base_model_relation: adapter",
        "library_name: peft",
        f"license: {base.license or 'other'}",
        "tags:",
        "- lora",
        "- federated-learning",
        "- flower",
        "- bayanihan",
        *_model_index(campaign, repo_id, rounds),
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A LoRA adapter for `{base.hf_id}`, refined federatedly by the Bayanihan community campaign "
        f"**{campaign.name}** (data task: `{campaign.data_task}`). Each contributor's data stayed on their own "
        "machine; only adapter tensors travelled, and the server merged them (see Aggregation).",
        "",
        *_notes(campaign),
        "## Intended use",
        "",
        f"Load it on top of `{base.hf_id}` to get the base model's behaviour refined towards `{campaign.data_task}`. "
        "It is a research and community artefact: check it on your own data before relying on it.",
        "",
        "## Base model",
        "",
        f"`{base.hf_id}` ({base.license or 'license not recorded'}). {base.note}".strip(),
        "The sha256 of every base-model file is listed in `provenance.json`.",
        "",
        "## Results (server held-out set)",
        "",
        "| round | eval loss | eval perplexity | train loss | nodes |",
        "|---|---|---|---|---|",
    ]
    for r in rounds:
        ok = sum(1 for n in r["nodes"] if not n["error"] and not n.get("rejected"))
        label = "0 (base model)" if r["round"] == 0 else str(r["round"])
        lines.append(
            f"| {label} | {_fmt(r['eval_loss'])} | {_fmt(r['eval_perplexity'])} | {_fmt(r['train_loss'])} | {ok} |"
        )
    lines += [
        "",
        f"Held-out loss went from {_fmt(before)} to {_fmt(after)}.",
        "",
        *_per_group(provenance),
        "## Training",
        "",
        f"- {campaign.num_rounds} federated rounds, at least {campaign.min_nodes} nodes connected per round"
        + (f", {campaign.nodes_per_round} drawn to train each round" if campaign.nodes_per_round else "")
        + "; "
        f"{len(nodes)} distinct contributor nodes (pseudonyms): {', '.join(nodes) or 'none'}.",
        f"- LoRA r={cfg.get('lora-r')}, alpha={cfg.get('lora-alpha')}, dropout={cfg.get('lora-dropout')}, "
        f"targets `{cfg.get('target-modules')}`; {cfg.get('local-steps')} local AdamW steps per round, "
        f"lr {cfg.get('lr')}, batch {cfg.get('batch-size')}, sequence length {cfg.get('seq-len')}.",
        f"- Adapters travelled in {campaign.transfer_dtype} between server and nodes; the server merged in float32.",
        "",
        "## Contributors",
        "",
        "Nodes are listed by pseudonym; their owners' names are not published.",
        "",
        *_contributors(rounds),
        "",
        "## Aggregation",
        "",
        "Each round the server sent the current adapter to the nodes, each node trained it on its own data, and the "
        "server merged the returned LoRA tensors, then evaluated the result on its held-out set. The sha256 of every "
        "round's merged adapter is in `provenance.json`.",
        "",
        f"- Aggregation method: {merging['aggregation']}.",
        f"- Server optimizer: {merging['server_optimizer']}.",
        f"- LoRA merge: {merging['lora_merge']}.",
        f"- Node learning rate: {train.lr:g}"
        + (
            f", scaled by the number of nodes in each round up to {train.max_lr_scale:g}x."
            if train.max_lr_scale > 1
            else ", unscaled."
        ),
        "",
        *_trust(provenance),
        "## Limitations",
        "",
        "- A small number of rounds on a small amount of data: expect a narrow, modest improvement on the data "
        "task, not general gains. Evaluation is one held-out set chosen by the campaign.",
        "- Contributors' data was not inspected by anyone but its owner; only data fingerprints are recorded.",
        "- The data fingerprints in `provenance.json` are public and unsalted (the sha256 of a node's normalized "
        "records): anyone holding an exact copy of a node's data can confirm it was used. They do not reveal the "
        "data itself.",
        "",
        "## How to use",
        "",
        f"From the Bayanihan site, with any Hugging Face client (`export HF_ENDPOINT={settings.SITE_URL}`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from peft import PeftModel",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base.hf_id}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")  # or a downloaded folder',
        "```",
        "",
        "Check it first: `python -m federation verify FOLDER_OR_URL --key signing-key.pub` checks the platform's "
        f"signature (`model.sig`, key at {settings.SITE_URL}/releases/signing-key.pub), every file's sha256 and "
        "the base model's pinned hashes.",
        "",
        "## Provenance",
        "",
        "`provenance.json` lists the base model's file hashes, the code version, the campaign configuration, "
        "every round with its participating nodes, their data fingerprints, sample counts and metrics, and the "
        "sha256 of every file in this release.",
        "",
    ]
    return "\n".join(lines)
