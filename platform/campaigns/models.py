"""Base models, campaigns, their rounds and who took part in each."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from community.models import Node
from federation.config import TRANSFER_DTYPES


class BaseCheckpoint(models.Model):
    """A base model: a local HF checkpoint registered for campaigns; `files` pins it by sha256."""

    name = models.SlugField(max_length=100, unique=True)
    hf_id = models.CharField(max_length=200, help_text="Upstream id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    path = models.CharField(max_length=500, help_text="Checkpoint directory on the SuperLink host and nodes")
    files = models.JSONField(default=dict, help_text="relative path -> sha256")
    license = models.CharField(max_length=50, blank=True)
    note = models.TextField(blank=True, help_text="Honest notes on where the weights came from")
    parameters = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "base model"  # what staff and contributors call it; the class name says what it is

    def __str__(self) -> str:
        return self.name


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        QUEUED = "queued"  # launched; waiting for a worker to submit it to the SuperLink
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"  # stopped by staff (campaign_cancel); campaign_resume relaunches it

    name = models.CharField(max_length=200)
    base_model = models.ForeignKey(BaseCheckpoint, on_delete=models.PROTECT, related_name="campaigns")
    data_task = models.CharField(max_length=100, help_text="What the contributed data is about, e.g. python-docs")
    heldout_path = models.CharField(max_length=500, help_text="Server held-out evaluation data (jsonl/txt)")
    train_config = models.JSONField(default=dict, help_text="federation.config.TrainConfig in run-config keys")
    aggregation = models.JSONField(
        default=dict,
        help_text="federation.config.AggregationConfig in run-config keys: strategy, norm bounds, central DP",
    )
    evaluation = models.JSONField(
        default=dict,
        blank=True,
        help_text="federation.config.EvaluationConfig in run-config keys: generation metrics scored on the held-out "
        "set each round (task-metrics: chrf, exact-match), their record and new-token bounds",
    )
    num_rounds = models.PositiveIntegerField(default=2)
    min_nodes = models.PositiveIntegerField(default=2)
    nodes_per_round = models.PositiveIntegerField(
        default=0,
        help_text="0: every connected node trains each round; K: K of the connected nodes, drawn at random each round",
    )
    round_timeout = models.PositiveIntegerField(
        default=3600,
        help_text="Seconds a round waits for the nodes' replies; then it merges those that came back "
        "and records the rest as failed",
    )
    transfer_dtype = models.CharField(
        max_length=10,
        choices=[(d, d) for d in TRANSFER_DTYPES],
        default="float32",
        help_text="How adapters travel each way (federation.packing): float32 is exact, float16/bfloat16 halve "
        "the bytes; the server merges in float32 either way",
    )
    auto_publish = models.BooleanField(
        default=True, help_text="Publish the release as soon as the campaign completes; off: staff publish it"
    )
    card_notes = models.TextField(blank=True, help_text="Staff's free text for the model card, until it is published")
    max_attempts = models.PositiveIntegerField(
        default=3,
        help_text="Flower runs the campaign may use: a run that fails for an infrastructure reason is resumed "
        "from the last merged round as a new run until this many have run (staff Resume starts a new count)",
    )

    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    status_reason = models.TextField(blank=True)
    flwr_run_id = models.CharField(max_length=20, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    launched_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        return self.status in {self.Status.COMPLETED, self.Status.FAILED, self.Status.CANCELLED}


class CampaignAttempt(models.Model):
    """One Flower run of a campaign: the first launch, an automatic resume, or a staff Resume."""

    class Trigger(models.TextChoices):
        LAUNCH = "launch"
        AUTO = "auto-resume"  # the previous run failed for an infrastructure reason
        RESUME = "resume"  # staff pressed Resume in the console

    class Outcome(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Kind(models.TextChoices):
        NONE = ""
        INFRASTRUCTURE = "infrastructure"  # the run ended failed without the ServerApp saying why: resumable
        TRAINING = "training"  # the ServerApp reported its own failure (bad config, ...): it would fail again

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.LAUNCH)
    flwr_run_id = models.CharField(max_length=20, blank=True)
    from_round = models.PositiveIntegerField(default=0, help_text="The merged round this run started from")
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the SuperLink accepted the run")
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices, default=Outcome.QUEUED)
    failure_kind = models.CharField(max_length=20, choices=Kind.choices, blank=True)
    reason = models.TextField(blank=True)

    class Meta:
        ordering = ["campaign", "number"]
        constraints = [models.UniqueConstraint(fields=["campaign", "number"], name="one_attempt_number_per_campaign")]

    def __str__(self) -> str:
        return f"{self.campaign} attempt {self.number}"


class Round(models.Model):
    """Round 0 is the base model's evaluation; rounds 1..N are federated training rounds."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    eval_loss = models.FloatField(null=True)
    eval_perplexity = models.FloatField(null=True)
    task_metrics = models.JSONField(
        default=dict, blank=True, help_text="Generation metric -> score on the held-out sample (chrf, exact-match: %)"
    )
    task_records = models.PositiveIntegerField(default=0, help_text="Held-out records the task metrics are over")
    group_metrics = models.JSONField(
        default=dict,
        blank=True,
        help_text="Held-out group (e.g. a language) -> its loss, tokens, records and task metrics",
    )
    train_loss = models.FloatField(null=True)
    participants = models.PositiveIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0, help_text="Replies refused by update validation")
    epsilon = models.FloatField(null=True, blank=True, help_text="Cumulative DP epsilon after this round")
    delta = models.FloatField(null=True, blank=True, help_text="The delta epsilon is stated at")
    bytes_up = models.BigIntegerField(default=0)
    bytes_down = models.BigIntegerField(default=0)
    duration_s = models.FloatField(null=True)
    adapter_files = models.JSONField(
        default=dict, help_text="file name -> sha256 of the merged adapter files stored (each equal to its declared)"
    )
    declared_files = models.JSONField(
        default=dict, help_text="file name -> sha256 the round event declared; only those bytes can be uploaded"
    )
    event_sha256 = models.CharField(
        max_length=64, blank=True, help_text="sha256 of the recorded round event: an identical resend is a no-op"
    )
    errors = models.JSONField(
        default=list, blank=True, help_text="Node rows of the report the platform could not attach or trust"
    )
    recorded_at = models.DateTimeField(auto_now=True)
    evaluated_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the held-out evaluation came in (it follows the merged round); empty: being evaluated",
    )

    class Meta:
        ordering = ["campaign", "number"]
        constraints = [models.UniqueConstraint(fields=["campaign", "number"], name="one_round_number_per_campaign")]

    def __str__(self) -> str:
        return f"{self.campaign} round {self.number}"

    @property
    def evaluated(self) -> bool:
        """Its held-out evaluation is in (a round goes on record when merged; its evaluation follows)."""
        return self.evaluated_at is not None or self.eval_loss is not None


# Rounds whose evaluation is in, as a filter (Round.evaluated): a loss, or an evaluation that found none finite.
EVALUATED = models.Q(evaluated_at__isnull=False) | models.Q(eval_loss__isnull=False)


class Participation(models.Model):
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="participations")
    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="participations")
    samples = models.PositiveIntegerField(default=0)
    tokens = models.PositiveIntegerField(default=0)
    train_loss = models.FloatField(null=True)
    val_loss_before = models.FloatField(null=True)
    val_loss_after = models.FloatField(null=True)
    seconds = models.FloatField(null=True)
    bytes_up = models.BigIntegerField(default=0)
    bytes_down = models.BigIntegerField(default=0)
    data_fingerprint = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    rejected_reason = models.TextField(blank=True, help_text="Why update validation refused it; not aggregated")
    update_norm = models.FloatField(null=True, blank=True, help_text="L2 norm of (reply - global adapter)")
    data_value = models.FloatField(
        null=True, blank=True, help_text="Cosine alignment of the node's update with the round's applied update"
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "node"], name="one_participation_per_node_round")]


class NodeFlag(models.Model):
    """A node whose update the server refused: staff look at it, then mark it resolved."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="flags")
    participation = models.OneToOneField(Participation, on_delete=models.CASCADE, related_name="flag")
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.node}: {self.reason[:60]}"
