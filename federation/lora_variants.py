"""Which adapter tensors a LoRA variant trains, and so sends back: the one contract node and server both read.

A LoRA layer adds B·A to a frozen weight. Averaging the nodes' A and B separately (plain LoRA under FedAvg) is not
the average of their products: mean_i(B_i)·mean_i(A_i) != mean_i(B_i·A_i). FFA-LoRA (Sun et al., ICLR 2024,
"Improving LoRA in Privacy-preserving Federated Learning") freezes A at its shared random initialisation and
trains only B, so that mean_i(B_i)·A = mean_i(B_i·A) exactly, and a node's reply carries half the adapter.

The campaign setting `lora-variant` (federation.config.TrainConfig) names the variant. Instructions always carry
the whole adapter (a node needs A to train B); a reply carries `trained_keys(...)` of it and nothing else: the
ClientApp packs exactly those, the server expects exactly those (federation.strategy), and `federation.task.train`
freezes the others for one job. Plain Python: imported by the node, the server and the site alike.
"""

from __future__ import annotations

from collections.abc import Iterable

LORA_VARIANTS = ("lora", "ffa")
FROZEN_FACTOR = "lora_A"  # the factor FFA-LoRA keeps at its initialisation (a segment of the tensor's dotted name)

# How the merged adapter's factors came about, for provenance and the model card (federation.strategy.describe).
LORA_MERGE = {
    "lora": "LoRA: A and B averaged separately (approximate: the mean of products is not the product of means)",
    "ffa": "FFA-LoRA: A frozen at its initialisation, only B trained and averaged: the merge is the exact mean "
    "of the nodes' updates",
}
assert tuple(LORA_MERGE) == LORA_VARIANTS


def check_variant(variant: str) -> str:
    if variant not in LORA_VARIANTS:
        raise ValueError(f"lora-variant must be one of {', '.join(LORA_VARIANTS)}, not {variant!r}")
    return variant


def is_frozen(name: str, variant: str) -> bool:
    """Whether `variant` keeps this adapter tensor at what the server sent. `name`: a state-dict key
    (`...q_proj.lora_A.weight`) or a parameter name (`...q_proj.lora_A.default.weight`)."""
    return check_variant(variant) == "ffa" and FROZEN_FACTOR in name.split(".")


def trained_keys(names: Iterable[str], variant: str) -> list[str]:
    """The adapter tensors `variant` trains, in the given order: what a node's reply carries."""
    return [name for name in names if not is_frozen(name, variant)]
