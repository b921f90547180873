"""The campaign form: types only. Limits are checked by campaign_create, whose messages land on these fields."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from campaigns.models import BaseCheckpoint
from federation.config import (
    NODE_VALIDATION,
    SERVER_OPTIMIZERS,
    STRATEGIES,
    TRANSFER_DTYPES,
    AggregationConfig,
    EvaluationConfig,
    TrainConfig,
)
from federation.events import TASK_METRICS
from federation.lora_variants import LORA_VARIANTS

DEFAULTS = TrainConfig()
MERGING = AggregationConfig()
# Form field -> run-config key; the service's messages start with the key, which is how they find their field.
TRAIN_FIELDS = {
    "lora_r": "lora-r",
    "lora_alpha": "lora-alpha",
    "lora_dropout": "lora-dropout",
    "target_modules": "target-modules",
    "local_steps": "local-steps",
    "lr": "lr",
    "seq_len": "seq-len",
    "batch_size": "batch-size",
    "threads": "threads",
    "node_validation": "node-validation",
    "max_eval_records": "max-eval-records",
    "lora_variant": "lora-variant",
    "max_lr_scale": "max-lr-scale",
}

# One line each: what a choice of transfer precision means for the campaign.
TRANSFER_CHOICES = {
    "float32": "float32: exact; full size on the wire (default)",
    "float16": "float16: half the bytes; about 3 significant digits, values beyond ±65504 are refused",
    "bfloat16": "bfloat16: half the bytes; float32's range but about 2 significant digits",
}
assert set(TRANSFER_CHOICES) == set(TRANSFER_DTYPES)

# One line each: how the nodes' adapters are merged under each LoRA variant (federation.lora_variants).
VARIANT_CHOICES = {
    "lora": "LoRA: A and B trained and averaged separately, an approximate merge (default)",
    "ffa": "FFA-LoRA: A frozen at its initialisation, only B trained and sent (half the uplink); an exact merge",
}
assert tuple(VARIANT_CHOICES) == LORA_VARIANTS

# Form field -> AggregationConfig run-config key (the rest of AggregationConfig keeps its defaults here).
AGGREGATION_FIELDS = {
    "strategy": "strategy",
    "server_optimizer": "server-optimizer",
    "server_lr": "server-lr",
    "server_momentum": "server-momentum",
}

SCORING = EvaluationConfig()
# Form field -> EvaluationConfig run-config key.
EVALUATION_FIELDS = {
    "task_metrics": "task-metrics",
    "task_max_records": "task-max-records",
    "task_max_new_tokens": "task-max-new-tokens",
}
# One line each: what a generation metric measures on the held-out set (federation.task_metrics).
TASK_METRIC_CHOICES = {
    "chrf": "chrF: character n-gram F-score of the generated answer against the record's (sacrebleu), 0-100",
    "exact-match": "exact match: % of held-out records whose answer is generated exactly",
}
assert tuple(TASK_METRIC_CHOICES) == TASK_METRICS

# One line each: what a merging strategy does with the round's accepted updates.
STRATEGY_CHOICES = {
    "fedavg": "FedAvg: mean weighted by each node's (capped) sample count; best when nodes are honest (default)",
    "fedmedian": "FedMedian: coordinate-wise median; one vote per contributor, resists a few hostile nodes",
    "fedtrimmedavg": "FedTrimmedAvg: drops the extremes of each coordinate, then averages",
    "multikrum": "MultiKrum: averages only the updates closest to each other; for campaigns open to strangers",
}
assert tuple(STRATEGY_CHOICES) == STRATEGIES

# One line each: the server's step from the round's global towards what the strategy merged.
SERVER_OPTIMIZER_CHOICES = {
    "sgd": "SGD: moves by server learning rate × the merged update, plus momentum × the last move (FedAvgM)",
    "adam": "Adam: per-coordinate steps scaled by the updates' running size (FedAdam); server learning rate = eta",
    "yogi": "Yogi: Adam with a more cautious second moment (FedYogi); server learning rate = eta",
}
assert tuple(SERVER_OPTIMIZER_CHOICES) == SERVER_OPTIMIZERS


class CampaignForm(forms.Form):
    name = forms.CharField(max_length=200)
    base_model = forms.ModelChoiceField(queryset=BaseCheckpoint.objects.order_by("name"), empty_label=None)
    data_task = forms.CharField(max_length=100, help_text="What the contributed data is about, e.g. python-docs")
    heldout_path = forms.CharField(
        max_length=500,
        help_text='Held-out file on the SuperLink host (jsonl/txt); records with a "group" (e.g. a language) are '
        "scored per group",
    )
    task_metrics = forms.MultipleChoiceField(
        choices=list(TASK_METRIC_CHOICES.items()),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Task metrics",
        help_text="Scored each round and on the base model from greedy answers to held-out instruction/chat "
        "records; none = held-out loss only",
    )
    task_max_records = forms.IntegerField(
        required=False,
        initial=SCORING.task_max_records,
        label="Task metric records",
        help_text="At most this many held-out records are answered per round, every group in turn",
    )
    task_max_new_tokens = forms.IntegerField(
        required=False,
        initial=SCORING.task_max_new_tokens,
        label="Task metric answer length",
        help_text="New tokens per answer",
    )
    num_rounds = forms.IntegerField(initial=2, label="Rounds")
    min_nodes = forms.IntegerField(initial=2, label="Min nodes per round")
    nodes_per_round = forms.IntegerField(
        initial=0,
        label="Nodes per round",
        help_text="0 = every connected node trains each round; K = K of them, drawn at random each round",
    )
    round_timeout = forms.IntegerField(
        initial=3600,
        label="Round timeout (s)",
        help_text="How long a round waits for replies; a node that has not answered by then counts as failed",
    )
    max_attempts = forms.IntegerField(
        required=False,
        initial=3,
        label="Max attempts",
        help_text="Flower runs the campaign may use: after an infrastructure failure (SuperLink restart, crash) "
        "it resumes from the last merged round as a new run, up to this many runs in all",
    )
    strategy = forms.ChoiceField(choices=list(STRATEGY_CHOICES.items()), initial=MERGING.strategy, label="Aggregation")
    server_optimizer = forms.ChoiceField(
        choices=list(SERVER_OPTIMIZER_CHOICES.items()),
        initial=MERGING.server_optimizer,
        label="Server optimizer",
        help_text="What the server does with the merged update; SGD with learning rate 1 and no momentum applies it "
        "as it is (plain federated averaging)",
    )
    server_lr = forms.FloatField(
        initial=MERGING.server_lr,
        label="Server learning rate",
        help_text="SGD: how far the server moves along the merged update (1 = all the way); Adam/Yogi: eta",
    )
    server_momentum = forms.FloatField(
        initial=MERGING.server_momentum,
        label="Server momentum",
        help_text="SGD only: the share of the previous round's move added to this one (0 = none)",
    )
    transfer_dtype = forms.ChoiceField(
        choices=[(d, TRANSFER_CHOICES[d]) for d in TRANSFER_DTYPES],
        initial="float32",
        label="Transfer precision",
        help_text="How the adapter travels between server and nodes, both ways; the server merges in float32 "
        "whatever you choose",
    )
    lora_r = forms.IntegerField(initial=DEFAULTS.lora_r, label="LoRA r")
    lora_alpha = forms.IntegerField(initial=DEFAULTS.lora_alpha, label="LoRA alpha")
    lora_dropout = forms.FloatField(initial=DEFAULTS.lora_dropout, label="LoRA dropout")
    lora_variant = forms.ChoiceField(
        choices=list(VARIANT_CHOICES.items()),
        initial=DEFAULTS.lora_variant,
        label="LoRA variant",
        help_text="How the nodes' adapters are merged: averaging A and B separately is not the average of the nodes' "
        "updates B·A; freezing A makes it so",
    )
    target_modules = forms.CharField(initial=DEFAULTS.target_modules)
    local_steps = forms.IntegerField(initial=DEFAULTS.local_steps, label="Local steps per round")
    lr = forms.FloatField(initial=DEFAULTS.lr, label="Learning rate")
    max_lr_scale = forms.FloatField(
        initial=DEFAULTS.max_lr_scale,
        label="Learning-rate scaling limit",
        help_text="Each node trains at the learning rate × the number of nodes in its round, at most this many "
        "times (averaging K updates moves about as far as one); 1 = no scaling",
    )
    seq_len = forms.IntegerField(initial=DEFAULTS.seq_len, label="Sequence length")
    batch_size = forms.IntegerField(initial=DEFAULTS.batch_size)
    threads = forms.IntegerField(initial=DEFAULTS.threads, help_text="torch threads per node process; 0 = default")
    node_validation = forms.ChoiceField(
        choices=[(v, v) for v in NODE_VALIDATION],
        initial=DEFAULTS.node_validation,
        label="Node validation",
        help_text="When each node measures its own validation loss: after training (default), before and after "
        "(twice the cost), or never; the held-out evaluation of every merged round is done by the server either way",
    )
    max_eval_records = forms.IntegerField(
        initial=DEFAULTS.max_eval_records,
        label="Node validation records",
        help_text="At most this many of a node's validation records are evaluated (each costs a forward pass)",
    )
    auto_publish = forms.BooleanField(
        required=False, initial=True, help_text="Publish the release when the campaign completes"
    )
    card_notes = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="Free text for the model card"
    )

    def service_kwargs(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "name": data["name"],
            "base_model": data["base_model"],
            "data_task": data["data_task"],
            "heldout_path": data["heldout_path"],
            "num_rounds": data["num_rounds"],
            "min_nodes": data["min_nodes"],
            "nodes_per_round": data["nodes_per_round"],
            "round_timeout": data["round_timeout"],
            "max_attempts": 3 if data.get("max_attempts") is None else data["max_attempts"],
            "transfer_dtype": data["transfer_dtype"],
            "train_config": {key: data[name] for name, key in TRAIN_FIELDS.items()},
            "aggregation": {key: data[name] for name, key in AGGREGATION_FIELDS.items()},
            "evaluation": {
                "task-metrics": ",".join(data["task_metrics"]),
                # Left empty: the defaults (an older form post, or a cleared field).
                "task-max-records": SCORING.task_max_records
                if data.get("task_max_records") is None
                else data["task_max_records"],
                "task-max-new-tokens": SCORING.task_max_new_tokens
                if data.get("task_max_new_tokens") is None
                else data["task_max_new_tokens"],
            },
            "auto_publish": data["auto_publish"],
            "card_notes": data["card_notes"],
        }

    def add_service_errors(self, exc: ValidationError) -> None:
        """Put campaign_create's messages next to the field they are about; the rest above the form."""
        by_key = {key: name for name, key in TRAIN_FIELDS.items()}
        by_aggregation_key = {key: name for name, key in AGGREGATION_FIELDS.items()}
        by_evaluation_key = {key: name for name, key in EVALUATION_FIELDS.items()}
        # campaign_create gives one message per problem (ConfigError.problems), each starting with its key.
        for field, problems in exc.message_dict.items():
            for problem in problems:
                key = problem.split(" ", 1)[0]
                if field in ("train_config", "aggregation") and key in by_key:
                    self.add_error(by_key[key], problem)
                elif field == "aggregation" and key in by_aggregation_key:
                    self.add_error(by_aggregation_key[key], problem)
                elif field == "evaluation" and key.rstrip(":") in by_evaluation_key:
                    self.add_error(by_evaluation_key[key.rstrip(":")], problem)
                elif field in self.fields:
                    self.add_error(field, problem)
                else:
                    self.add_error(None, f"{field}: {problem}" if field != "__all__" else problem)
