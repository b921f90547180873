"""running_platform hands the process back as it found it: stop-signal handlers and broker, also after an error."""

from __future__ import annotations

import os
import signal
import time

import pytest
from django.conf import settings as django_settings

from stack.runner import running_platform


def test_signals_and_broker_are_restored_on_the_way_out(tmp_path, settings, monkeypatch):
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    # Nothing started but the broker (an embedded one where no Redis answers): the wrapping alone is tested here.
    with pytest.raises(RuntimeError, match="boom"):
        with running_platform(tmp_path, federation=False, worker=False, broker_dir=tmp_path / "redis") as up:
            assert os.environ["CELERY_BROKER_URL"] == up.broker.url == django_settings.CELERY_BROKER_URL
            assert up.env["CELERY_BROKER_URL"] == up.broker.url and up.superlink is None
            with pytest.raises(KeyboardInterrupt, match="SIGTERM"):  # a SIGTERM unwinds as Ctrl-C does
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next bytecode; never reached
            raise RuntimeError("boom")
    assert "CELERY_BROKER_URL" not in os.environ
    assert django_settings.CELERY_BROKER_URL == "redis://127.0.0.1:6379/0"
    assert {s: signal.getsignal(s) for s in before} == before
    assert up.broker.embedded is None  # an embedded server was shut down
