"""Where the multi-host test cannot run, it says why (tests/platform/multihost.py `unavailable`)."""

from __future__ import annotations

import shutil

import multihost


def test_without_root_the_reason_names_root(monkeypatch):
    monkeypatch.setattr(multihost.os, "geteuid", lambda: 1000)
    assert multihost.unavailable() == "network namespaces need root (ip netns add); running as uid 1000"


def test_a_missing_tool_is_named(monkeypatch):
    monkeypatch.setattr(multihost.os, "geteuid", lambda: 0)
    real = shutil.which
    monkeypatch.setattr(multihost.shutil, "which", lambda tool: None if tool == "ip" else real(tool))
    assert multihost.unavailable() == "`ip` is not installed"
