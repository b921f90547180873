"""A new contributor: sign up → approved → printed join command → trains in a round → sees it on their page."""

from __future__ import annotations

import re
import shlex

import pytest

from campaigns.models import Campaign
from community.models import Contributor
from community.services import contributor_set_status
from federation import procs

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
PASSWORD = "a-long-pass-phrase-42"


def test_new_contributor_joins_and_sees_their_participation(client, live_platform, tmp_path):
    client.post("/signup/", {"username": "rosa", "email": "r@x.org", "password": PASSWORD, "accept_terms": "on"})
    contributor_set_status(contributor=Contributor.objects.get(user__username="rosa"), status="approved")
    client.login(username="rosa", password=PASSWORD)
    page = client.post("/me/tokens").content.decode()
    printed = re.search(r"<pre>(python -m federation join [^<]+)</pre>", page).group(1)

    # Run exactly the printed command, filling in the placeholders as the README says.
    argv = shlex.split(printed.replace("&quot;", '"'))
    argv[argv.index("--site") + 1] = live_platform.site_url
    argv[argv.index("--data") + 1] = str(live_platform.corpus / "node-2")
    argv[argv.index("--model") + 1] = str(live_platform.model)
    argv += ["--name", "rosa-pc", "--home", str(tmp_path / "rosa"), "--interval", "1"]
    live_platform.stack.supervisor.start(
        "rosa", [procs.sys.executable, *argv[1:]], env=procs.flower_env(tmp_path / "h")
    )

    campaign = live_platform.run_campaign(
        "Journey", train_config={"local-steps": 2, "seq-len": 32, "threads": 1}, num_rounds=1, min_nodes=3
    )
    assert campaign.status == Campaign.Status.COMPLETED, campaign.status_reason

    page = client.get("/me/").content.decode()
    assert "rosa-pc" in page and "online" in page
    assert re.search(r'<strong id="rounds">1</strong>', page)
    assert "Journey" in page and campaign.release.repo_id in page
