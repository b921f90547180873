"""The ServerApp's link to the site comes from the SuperLink's environment, never from the run config."""

from __future__ import annotations

import json

import pytest

from federation.config import ServerPaths
from federation.report import LINK_SECRET_ENV, LOCAL_PATHS_ENV, RUN_ID_HEADER, SITE_URL_ENV, Reporter, SiteLink


def test_link_reads_the_secret_file_named_in_the_environment(tmp_path):
    secret = tmp_path / "link-secret"
    secret.write_text("abc\n")
    link = SiteLink.from_env({SITE_URL_ENV: "http://site:8000/", LINK_SECRET_ENV: str(secret)})
    assert link.secret == "abc"
    assert link.campaign_url(7) == "http://site:8000/api/v1/campaigns/7"
    assert link.headers(42) == {"Authorization": "Bearer abc", RUN_ID_HEADER: "42"}


@pytest.mark.parametrize("env", [{}, {SITE_URL_ENV: "http://site"}, {LINK_SECRET_ENV: "/x"}])
def test_missing_link_settings_are_named(env):
    with pytest.raises(RuntimeError, match=f"{SITE_URL_ENV} and {LINK_SECRET_ENV}"):
        SiteLink.from_env(env)


def test_unreadable_or_empty_secret_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot read the link secret"):
        SiteLink.from_env({SITE_URL_ENV: "http://site", LINK_SECRET_ENV: str(tmp_path / "absent")})
    (tmp_path / "empty").write_text("")
    with pytest.raises(RuntimeError, match="is empty"):
        SiteLink.from_env({SITE_URL_ENV: "http://site", LINK_SECRET_ENV: str(tmp_path / "empty")})


def test_without_a_site_paths_come_from_a_local_file_and_reports_are_only_journalled(tmp_path):
    paths = ServerPaths(base_model_path="/m", heldout_path="/h.jsonl", output_dir=str(tmp_path / "out"))
    (tmp_path / "3.json").write_text(json.dumps(paths.to_json()))
    link = SiteLink.from_env({LOCAL_PATHS_ENV: str(tmp_path)})
    assert link.server_paths(3, run_id=1) == paths
    reporter = Reporter(link.campaign_url(3), link.secret, tmp_path / "out", run_id=1)
    reporter.event("started")
    assert json.loads((tmp_path / "out" / "events.jsonl").read_text())["type"] == "started"


def test_server_paths_from_the_site_must_name_every_path():
    with pytest.raises(ValueError, match="output-dir"):
        ServerPaths.from_json({"base-model-path": "/m", "heldout-path": "/h"})


def test_server_paths_carry_the_node_owners_and_refuse_a_malformed_map():
    body = {"base-model-path": "/m", "heldout-path": "/h", "output-dir": "/o", "node-owners": {"7": "3", "8": "3"}}
    paths = ServerPaths.from_json(body)
    assert paths.node_owners == {"7": "3", "8": "3"} and ServerPaths.from_json(paths.to_json()) == paths
    with pytest.raises(ValueError, match="node-owners"):
        ServerPaths.from_json({**body, "node-owners": ["7"]})


def test_an_event_may_carry_a_field_named_kind(tmp_path):
    """The ServerApp's `failed` event says its `kind`; that field once collided with event()'s own parameter, so
    the TypeError replaced the report and a training failure reached the site as an infrastructure one."""
    Reporter("", "t", tmp_path).event("failed", kind="training", reason="ValueError: lr")
    sent = json.loads((tmp_path / "events.jsonl").read_text())
    assert (sent["type"], sent["kind"], sent["reason"]) == ("failed", "training", "ValueError: lr")
