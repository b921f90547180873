"""`manage.py demo --corpus l10n` on the tiny model: 8 languages on 3 region nodes, scored per language with chrF,
and the release's model card carries the per-language results as the Hub's model-index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from federation import procs
from federation.l10n_corpus import DEMO_NODES

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_the_l10n_demo_scores_every_language_before_and_after_and_publishes_them(tmp_path):
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in ("CELERY_BROKER_URL", "DATABASE_URL", "CELERY_QUEUE")}
    env.update(
        BAYANIHAN_VAR=str(var),
        PORT=str(procs.free_port()),
        SUPERLINK_ADDRESS=f"127.0.0.1:{procs.free_port()}",
    )
    command = [
        sys.executable, "manage.py", "demo", "--tiny", "--corpus", "l10n", "--rounds", "1", "--local-steps", "2",
        "--max-chunks", "16", "--heldout", "2", "--max-new-tokens", "4", "--seq-len", "96",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    languages = [code for codes in DEMO_NODES.values() for code in codes]
    assert len(languages) >= 6 and len(DEMO_NODES) >= 3
    assert "Held-out per group: base model (round 0) → round 1" in output
    for code in languages:
        assert f"│ {code} " in output, code  # a row per language in the summary table
    [card_path] = var.glob("data/releases/**/README.md") or var.glob("**/releases/**/README.md")
    results = ModelCard(card_path.read_text()).data.eval_results
    scored = {r.dataset_config for r in results if r.metric_type == "chrf"}
    assert scored == {*languages, "all"}
