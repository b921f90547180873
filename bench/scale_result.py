"""One size of the scale benchmark as planned and as measured (Result, which the per-size child writes as JSON), and
the workload every size runs: shared by the orchestration (bench/scale.py) and the report (bench/scale_report.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRAIN_CONFIG = {"local-steps": 1, "seq-len": 32, "batch-size": 2, "threads": 1, "max-eval-records": 2}
RECORDS_PER_NODE = 4
RESTART_AFTER_S = 5.0  # join's default --retry-seconds


@dataclass
class Result:
    n: int
    train: int = 0  # nodes drawn to train in the round (the campaign's nodes per round); n = every node
    all_train: bool = False  # the extra run of this size with every node training (--all-train-sizes)
    outcome: str = "not run"
    phase: str = ""  # where it was when it ended: start, enroll, nodes, online, round, done
    site_s: float | None = None
    enroll_s: float | None = None
    started_nodes: int = 0
    online_s: float | None = None
    online: int = 0
    submitted_s: float | None = None
    round0_s: float | None = None
    round1_s: float | None = None
    done_s: float | None = None
    server_round_s: float | None = None
    campaign_status: str = ""
    campaign_reason: str = ""
    release: bool = False
    participations: int = 0
    participants_ok: int = 0
    failures: int = 0
    dead_nodes: int = 0
    lost_replies: int = 0  # nodes whose reply the SuperLink refused ("Failed to send message" in their log)
    restarts: int = 0  # SuperNodes that exited and were started again (what `join` does for a contributor)
    db_locked: int = 0  # "database is locked" errors in the SuperLink's log
    teardown_s: float | None = None
    baseline_available_gib: float = 0.0
    memory: dict[str, Any] = field(default_factory=dict)
    log_errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    wall_s: float | None = None
    warm: str = "shared"  # shared: one warm worker for every node of the host; off: every job cold
    warm_jobs: dict[str, int] = field(default_factory=dict)  # the shared worker's own count (warm-worker.json)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def trains_all(self) -> bool:
        return not self.train or self.train >= self.n

    @property
    def name(self) -> str:
        """How the findings name this run: its size and how many of its nodes trained."""
        return f"N = {self.n} ({'all' if self.trains_all else self.train} training)"

    @property
    def label(self) -> str:
        """Its folder under var/bench/scale: the size, and "-all" for a size also run with every node training."""
        return f"n{self.n}-all" if self.all_train else f"n{self.n}"

    @property
    def completed(self) -> bool:
        """The round ran to the end and was recorded, with every update or with what came back in time."""
        return self.campaign_status == "completed"
