"""`manage.py prepare_base_model` is what staff run on a fresh site before the first `make serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_prepare_base_model_on_a_fresh_var_registers_the_model_instead_of_a_missing_table_traceback(tmp_path):
    # A fresh site: its own var/ and SQLite database, no tables yet (the test database is not involved).
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env["BAYANIHAN_VAR"] = str(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "manage.py", "prepare_base_model", "--tiny"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "files pinned" in output
