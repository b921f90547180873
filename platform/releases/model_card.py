"""README.md model card with Hugging Face YAML front matter."""

from __future__ import annotations

from typing import Any

from campaigns.models import Campaign


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_model_card(campaign: Campaign, repo_id: str, provenance: dict[str, Any]) -> str:
    base = campaign.base_model
    rounds = provenance["rounds"]
    before, after = rounds[0]["eval_loss"], rounds[-1]["eval_loss"]
    nodes = sorted({n["node"] for r in rounds for n in r["nodes"] if not n["error"]})
    cfg = campaign.train_config
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
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A LoRA adapter for `{base.hf_id}`, refined federatedly by the Bayanihan community campaign "
        f"**{campaign.name}** (data task: `{campaign.data_task}`). Each contributor's data stayed on their own "
        "machine; only adapter tensors travelled, and were merged with FedAvg weighted by sample counts.",
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
        ok = sum(1 for n in r["nodes"] if not n["error"])
        label = "0 (base model)" if r["round"] == 0 else str(r["round"])
        lines.append(
            f"| {label} | {_fmt(r['eval_loss'])} | {_fmt(r['eval_perplexity'])} | {_fmt(r['train_loss'])} | {ok} |"
        )
    lines += [
        "",
        f"Held-out loss went from {_fmt(before)} to {_fmt(after)}.",
        "",
        "## Training",
        "",
        f"- {campaign.num_rounds} federated rounds, at least {campaign.min_nodes} nodes per round; "
        f"{len(nodes)} distinct contributor nodes (pseudonyms): {', '.join(nodes) or 'none'}.",
        f"- LoRA r={cfg.get('lora-r')}, alpha={cfg.get('lora-alpha')}, dropout={cfg.get('lora-dropout')}, "
        f"targets `{cfg.get('target-modules')}`; {cfg.get('local-steps')} local AdamW steps per round, "
        f"lr {cfg.get('lr')}, batch {cfg.get('batch-size')}, sequence length {cfg.get('seq-len')}.",
        "",
        "## Limitations",
        "",
        "- A small number of rounds on a small amount of data: expect a narrow, modest improvement on the data "
        "task, not general gains. Evaluation is one held-out set chosen by the campaign.",
        "- Contributors' data was not inspected by anyone but its owner; only data fingerprints are recorded.",
        "",
        "## How to use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "from peft import PeftModel",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base.hf_id}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "```",
        "",
        "## Provenance",
        "",
        "`provenance.json` lists the base model's file hashes, the code version, the campaign configuration, "
        "every round with its participating nodes, their data fingerprints, sample counts and metrics, and the "
        "sha256 of every file in this release.",
        "",
    ]
    return "\n".join(lines)
