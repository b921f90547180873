"""The ServerApp's Reporter against a real HTTP server that answers 500 a few times (a site restarting)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from federation.report import Reporter, SiteUnavailable


def test_an_event_is_resent_through_passing_500s_until_the_site_takes_it(flaky_server, tmp_path):
    flaky_server.failures = 2
    bodies = []
    flaky_server.ok = lambda method, path, body: (bodies.append(body), (200, b'{"ok": true}'))[1]
    Reporter(flaky_server.url, "t", tmp_path).event("round", round=1, eval_loss=2.0)
    assert [status for _, _, status in flaky_server.seen] == [500, 500, 200]
    assert json.loads(bodies[0])["round"] == 1


def test_every_resend_carries_the_same_bytes(flaky_server, tmp_path):
    """The site recognises a resent event by its content: a retry must not change it (its `time` included)."""
    flaky_server.failures, flaky_server.status = 2, 502
    bodies = []

    def ok(method, path, body):
        bodies.append(body)
        return (503, b"") if len(bodies) == 1 else (200, b"{}")

    flaky_server.ok = ok
    Reporter(flaky_server.url, "t", tmp_path).event("round", round=1)
    assert len(bodies) == 2 and bodies[0] == bodies[1]


def test_a_refusal_is_not_retried(flaky_server, tmp_path):
    flaky_server.failures, flaky_server.status = 1, 409
    Reporter(flaky_server.url, "t", tmp_path).event("round", round=1)
    assert [status for _, _, status in flaky_server.seen] == [409]


def test_the_reporter_gives_up_after_its_patience_without_raising(flaky_server, tmp_path):
    flaky_server.failures = 1000
    started = time.monotonic()
    Reporter(flaky_server.url, "t", tmp_path, patience=2.5).event("round", round=1)
    assert time.monotonic() - started < 5
    assert 2 <= len(flaky_server.seen) <= 3
    assert json.loads((tmp_path / "events.jsonl").read_text())["round"] == 1  # journalled all the same


def serve_round_files(flaky_server, files: dict[str, bytes], lie: bool = False) -> None:
    def ok(method, path, body):
        name = path.rsplit("/", 1)[1]
        if name not in files:
            return 404, b'{"error": "no such file"}'
        flaky_server.headers = {"X-Content-SHA256": hashlib.sha256(b"x" if lie else files[name]).hexdigest()}
        return 200, files[name]

    flaky_server.ok = ok


def test_a_round_is_downloaded_through_passing_500s(flaky_server, tmp_path):
    files = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"\x00" * 1000}
    flaky_server.failures = 1
    serve_round_files(flaky_server, files)
    folder = Reporter(flaky_server.url, "t", tmp_path / "j").download_round(1, tmp_path / "round-1")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert [p for _, p, s in flaky_server.seen if s == 200] == [
        "/rounds/1/files/adapter_config.json",
        "/rounds/1/files/adapter_model.safetensors",
    ]


def test_a_rounds_server_optimizer_state_is_downloaded_when_the_round_has_one(flaky_server, tmp_path):
    files = {
        "adapter_config.json": b"{}",
        "adapter_model.safetensors": b"\x00" * 10,
        "server_optimizer.safetensors": b"\x01" * 10,
    }
    flaky_server.failures = 0
    serve_round_files(flaky_server, files)
    folder = Reporter(flaky_server.url, "t", tmp_path / "j").download_round(1, tmp_path / "round-1")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_a_downloaded_file_must_match_the_sha256_the_site_recorded(flaky_server, tmp_path):
    flaky_server.failures = 0
    serve_round_files(flaky_server, {"adapter_config.json": b"{}", "adapter_model.safetensors": b""}, lie=True)
    with pytest.raises(RuntimeError, match="does not match"):
        Reporter(flaky_server.url, "t", tmp_path).download_round(1, tmp_path / "round-1")


def test_a_download_from_a_site_that_stays_down_raises_site_unavailable(flaky_server, tmp_path):
    flaky_server.failures = 1000
    with pytest.raises(SiteUnavailable):
        Reporter(flaky_server.url, "t", tmp_path, patience=1.5).download_round(1, tmp_path / "round-1")
