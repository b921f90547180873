"""`join`'s view of its SuperNode: never "connected" for a node the SuperLink does not see; restarts and back-off."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from federation.node_watch import LogSigns, LogTail, Watch, read_signs, status_line, training_now

ROUND = {"campaign": "c1", "round": 2, "train_loss": 1.25, "error": ""}
NONE = LogSigns()


def beat(link: str, last: dict | None = ROUND) -> tuple[int, dict]:
    return 200, {"status": "active", "superlink": link, "last_round": last}


def test_connected_only_when_the_superlink_sees_the_node_online():
    assert status_line(*beat("online"), "online").startswith("connected · last round: c1 round 2 · train loss 1.2500")
    assert status_line(*beat("offline"), "offline").startswith("reconnecting")
    assert status_line(*beat("unknown", None), "unknown") == "waiting for the SuperLink · waiting for the first round"
    unreachable = status_line(0, {"error": "Connection refused"}, "unknown")
    assert unreachable.startswith("site unreachable (Connection refused)") and "connected" not in unreachable
    assert "connected" not in status_line(429, {"error": "too many heartbeats"}, "unknown")


def test_a_live_process_the_superlink_calls_offline_is_restarted_after_the_grace_period():
    watch = Watch(offline_grace=30)
    watch.started(0)
    for t in (5, 20, 34):
        v = watch.observe(t, True, *beat("offline"), NONE)
        assert not v.restart and v.line.startswith("reconnecting") and "connected" not in v.line.replace("dis", "")
    v = watch.observe(36, True, *beat("offline"), NONE)
    assert v.restart and "did not see it for 31s" in watch.reason


def test_offline_is_counted_from_the_later_of_start_and_first_offline_answer():
    watch = Watch(offline_grace=30)
    watch.started(100)
    assert not watch.observe(101, True, *beat("offline"), NONE).restart
    assert not watch.observe(125, True, *beat("online"), NONE).restart
    assert not watch.observe(130, True, *beat("offline"), NONE).restart  # offline again: a new 30 s
    assert not watch.observe(159, True, *beat("offline"), NONE).restart
    assert watch.observe(160, True, *beat("offline"), NONE).restart


def test_restarts_that_do_not_help_back_off_so_a_wrong_answer_cannot_restart_a_node_forever():
    watch = Watch(offline_grace=30, offline_grace_max=120)
    graces = []
    t = 0.0
    for _ in range(5):
        watch.started(t)
        start = t
        while not watch.observe(t, True, *beat("offline"), NONE).restart:
            t += 1
        graces.append(t - start)
        t += 5
    assert graces == [30, 60, 120, 120, 120]
    watch.started(t)
    watch.observe(t + 1, True, *beat("online"), NONE)  # seen online: the grace is back to 30 s
    assert watch.grace == 30


def test_unknown_or_unreachable_site_never_restarts_a_live_node_and_never_says_connected():
    watch = Watch(offline_grace=1)
    watch.started(0)
    for t in range(2, 300, 10):
        for code, body in (beat("unknown"), (0, {"error": "timeout"}), (500, {})):
            v = watch.observe(t, True, code, body, NONE)
            assert not v.restart and not v.line.startswith("connected")


def test_a_fleet_error_in_the_log_restarts_at_once():
    signs = read_signs(
        "ERROR :      Server error '500 Internal Server Error' for url "
        "'https://127.0.0.1:9093/v1/fleet/pull-messages'\n"
    )
    assert signs.lost == ["HTTP 500 on pull-messages"]
    watch = Watch()
    watch.started(0)
    v = watch.observe(3, True, *beat("online"), signs)  # the site's cached answer may still say online
    assert v.restart and v.line.startswith("reconnecting · its connection ended (HTTP 500 on pull-messages)")


def test_retried_gateway_errors_are_not_signs():
    text = "WARNING : Server error '503 Service Unavailable' for url 'https://h:1/v1/fleet/pull-messages'\n"
    assert read_signs(text).lost == []


def test_refused_activation_backs_off_from_15_to_70_seconds_and_never_gives_up():
    watch = Watch(backoff_start=15, backoff_max=70)
    refused = read_signs(
        "Failed to initialize the connection to the SuperLink.\n[code: 3] Failed to activate SuperNode.\n"
    )
    assert refused.activate_refused
    waits = []
    for t in range(6):
        watch.started(t * 100)
        watch.observe(t * 100 + 1, True, *beat("offline"), refused)  # logged while it was still exiting
        v = watch.observe(t * 100 + 2, False, *beat("offline"), NONE)
        assert v.restart and "HTTP 412" in v.line and not v.line.startswith("connected")
        waits.append(v.start_in)
    assert waits == [15, 30, 60, 70, 70, 70]
    watch.started(700)
    watch.observe(701, True, *beat("online"), NONE)
    watch.observe(702, True, *beat("offline"), refused)
    assert watch.observe(703, False, *beat("offline"), NONE).start_in == 15  # online in between: back to 15 s


def test_an_exit_without_refusal_retries_after_retry_seconds():
    watch = Watch(retry_seconds=5)
    watch.started(0)
    v = watch.observe(10, False, *beat("offline"), NONE)
    assert v.restart and v.start_in == 5 and v.line.startswith("reconnecting")


def test_app_refusals_are_read_from_the_log():
    line = "ERROR :      app refused: mallory/evil: files that differ from the installed app: a.py, b.py (run 7)"
    assert read_signs(line).refusals == ["mallory/evil: files that differ from the installed app: a.py, b.py"]


def test_log_tail_returns_only_new_complete_lines_and_survives_truncation(tmp_path: Path):
    path = tmp_path / "supernode.log"
    path.write_text("old line\n")
    tail = LogTail(path)
    tail.skip_to_end()
    assert tail.read() == ""
    with path.open("a") as f:
        f.write("first\nsecond part")
    assert tail.read() == "first"
    with path.open("a") as f:
        f.write(" done\n")
    assert tail.read() == "second part done"
    path.write_text("new\n")  # replaced by a shorter file
    assert tail.read() == "new"


def test_the_status_says_when_a_round_is_training_now_from_the_warm_worker_or_a_task_process(tmp_path):
    """A round's task runs for minutes: the status line must say so, not only "waiting for the first round"."""
    assert training_now(tmp_path, None) == ""
    (tmp_path / "warm-worker.json").write_text(json.dumps({"running": "msg-1", "waiting": 0}))
    assert training_now(tmp_path, None) == "training a round now"
    (tmp_path / "warm-worker.json").write_text(json.dumps({"running": "", "waiting": 2}))
    assert training_now(tmp_path, None) == "2 round task(s) queued"
    (tmp_path / "warm-worker.json").write_text(json.dumps({"running": "", "waiting": 0}))
    # Otherwise a task process under the SuperNode is a task in progress: `federation.node_runtime`, or the task
    # launcher's client waiting on its task (but not a launcher: it serves every task of its worker).
    for module, extra, seen in (
        ("federation.node_runtime", "", "running a round task now"),
        ("federation.task_launcher", "--token", "running a round task now"),
        ("federation.task_launcher", "serve", ""),
    ):
        parent = subprocess.Popen(
            [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
             f"'import time; time.sleep(30)', '-m', '{module}', '{extra}'])"],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 10
            while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert training_now(tmp_path, parent.pid) == seen, (module, extra)
        finally:
            for child in psutil.Process(parent.pid).children(recursive=True):
                child.kill()
            parent.kill()
            parent.wait()
        assert training_now(tmp_path, parent.pid) == ""
