"""The console in a real browser (headless Chromium) against a live server with real nodes.

Staff log in, approve a contributor, create and launch a campaign on the tiny model, watch its rounds appear
without a reload, read the charts, write the card notes and publish; a contributor is refused the console.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from campaigns.models import Campaign
from campaigns.services.setup import base_model_register
from community.models import Contributor
from community.services import contributor_signup
from console.models import AuditEntry
from federation import control

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "a-long-pass-phrase-42"
ARTIFACTS = Path(settings.REPO_ROOT) / "var" / "test-artifacts" / "console"
CAMPAIGN_SECONDS = 300

pytestmark = [
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install)"),
]


@pytest.fixture
def browser(monkeypatch) -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (requirements.txt)")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


def log_in(browser, site: str, username: str, next_url: str = "/console/"):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(f"{site}/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_for_nodes_online(page, site: str, live_platform, count: int) -> None:
    for _ in range(60):
        live_platform.stack.check()
        page.goto(f"{site}/console/")
        if int(page.inner_text("#nodes-online")) >= count:
            return
        page.wait_for_timeout(1000)
    raise AssertionError(f"fewer than {count} nodes online on the dashboard")


def test_staff_run_a_campaign_from_the_browser(browser, live_platform):
    site = live_platform.site_url
    get_user_model().objects.create_user("staffer", "staff@example.org", PASSWORD, is_staff=True)
    rosa = contributor_signup(username="rosa", email="rosa@example.org", password=PASSWORD, accept_terms=True)
    base_model_register(path=live_platform.model, name="tiny", hf_id="test/tiny-llama")

    page = log_in(browser, site, "staffer")
    assert page.url == f"{site}/console/"
    wait_for_nodes_online(page, site, live_platform, 2)

    # Approve the contributor waiting for it.
    page.click("text=People & nodes")
    page.locator(f"#contributor-{rosa.pk} button[value=approved]").click()
    assert "rosa: approved." in page.inner_text(".msg.success")
    rosa.refresh_from_db()
    assert rosa.status == Contributor.Status.APPROVED
    # Whole word: a pseudonym such as "node-1f3a…" must not count as node-1.
    assert page.locator("#node-list tr", has_text=re.compile(r"\bnode-1\b")).count() == 1

    # Create a campaign: a bad value is explained next to its field, then fixed.
    page.click("text=New campaign")
    page.select_option("#id_base_model", label="tiny")
    page.fill("#id_name", "Browser campaign")
    page.fill("#id_data_task", "python-docs")
    page.fill("#id_heldout_path", str(live_platform.corpus / "heldout.jsonl"))
    for field, value in {"local_steps": "4", "seq_len": "64", "batch_size": "4", "threads": "1", "lr": "3"}.items():
        page.fill(f"#id_{field}", value)
    page.uncheck("#id_auto_publish")  # staff publish it after writing the card notes
    page.click("text=Create campaign")
    assert "lr must be in (0, 1)" in page.inner_text("#field-lr .errorlist")
    page.fill("#id_lr", "0.01")
    page.click("text=Create campaign")
    campaign = Campaign.objects.get(name="Browser campaign")
    assert page.url == f"{site}/console/campaigns/{campaign.pk}/"

    # Launch, then watch rounds 0..2 arrive on the same page (a reload would drop the marker).
    page.click("#launch")
    page.evaluate("window.__not_reloaded = true")
    for number in range(campaign.num_rounds + 1):
        page.wait_for_selector(f"#rounds tr[data-round='{number}']", timeout=CAMPAIGN_SECONDS * 1000)
        live_platform.stack.check()
        if number == 1:
            reported = page.inner_text("#reported")
            assert "node-1" in reported and "node-2" in reported and "merged" in reported
    page.wait_for_selector("#live-state[data-status='completed']", timeout=CAMPAIGN_SECONDS * 1000)
    assert page.evaluate("window.__not_reloaded") is True
    assert page.locator("#publish").is_visible()  # auto-publish was off

    charts = page.locator("#charts svg")
    assert charts.count() == 4
    rounds = list(Campaign.objects.get(pk=campaign.pk).rounds.order_by("number"))
    eval_chart = charts.nth(0).text_content()
    assert all(f"{r.eval_loss:.4f}" in eval_chart for r in rounds)  # every value printed, round 0 = base
    assert "round" in eval_chart and "eval loss" in eval_chart  # axis titles

    # Edit the model card's free text, then publish.
    page.fill("textarea[name=card_notes]", "Refined on the Python docs only; check it on your own data.")
    page.click("text=Save notes")
    assert "Model card notes saved." in page.inner_text(".msg.success")
    screenshot(page, "campaign")
    page.click("#publish")
    assert "Release published." in page.inner_text(".msg.success")
    release = Campaign.objects.get(pk=campaign.pk).release
    assert "Refined on the Python docs only" in (Path(release.path) / "README.md").read_text()
    assert page.locator("#release-link").inner_text() == release.repo_id
    screenshot(page, "campaign-published")

    page.click("text=Dashboard")
    assert release.repo_id in page.content() and "Browser campaign" in page.inner_text("body")
    screenshot(page, "dashboard")

    # Yank it, and find every action of this session in the audit log.
    page.click("text=Releases")
    page.locator("#release-list tr", has_text=release.repo_id).locator("input[name=reason]").fill("demo only")
    page.locator("#release-list tr", has_text=release.repo_id).locator("button").click()
    assert "yanked" in page.inner_text("#release-list")
    page.click("text=Audit log")
    log = page.inner_text("#audit")
    for action in ("contributor.approved", "campaign.create", "campaign.launch", "campaign.card_notes",
                   "campaign.publish", "release.yank"):  # fmt: skip
        assert action in log, action
    # Besides staff's own actions, only the platform's record of each Flower run (attempts) is in the log.
    assert set(AuditEntry.objects.exclude(actor_name="platform").values_list("actor_name", flat=True)) == {"staffer"}
    assert all(
        a.startswith("campaign.attempt")
        for a in AuditEntry.objects.filter(actor_name="platform").values_list("action", flat=True)
    )

    # A contributor is refused the console.
    rosa_page = log_in(browser, site, "rosa", next_url="/me/")
    response = rosa_page.goto(f"{site}/console/")
    assert response.status == 403
    assert "Browser campaign" not in rosa_page.content()

    if (docs := Path(settings.REPO_ROOT) / "docs").is_dir():  # refresh the README's screenshots
        for name in ("dashboard", "campaign"):
            shutil.copyfile(ARTIFACTS / f"{name}.png", docs / f"console-{name}.png")


def test_staff_cancel_a_running_campaign_and_resume_it(browser, live_platform):
    site = live_platform.site_url
    get_user_model().objects.create_user("staffer", "staff@example.org", PASSWORD, is_staff=True)
    base_model_register(path=live_platform.model, name="tiny", hf_id="test/tiny-llama")
    page = log_in(browser, site, "staffer")
    wait_for_nodes_online(page, site, live_platform, 2)
    page.click("text=New campaign")
    page.fill("#id_name", "Cancel me")
    page.fill("#id_data_task", "python-docs")
    page.fill("#id_heldout_path", str(live_platform.corpus / "heldout.jsonl"))
    for field, value in {"num_rounds": "1", "local_steps": "2", "seq_len": "32", "threads": "1"}.items():
        page.fill(f"#id_{field}", value)
    page.click("text=Create campaign")
    page.click("#launch")
    page.wait_for_selector("#live-state[data-status='running']", timeout=60_000)
    page.fill("#live input[name=reason]", "wrong held-out set")
    page.click("#cancel")
    assert "Cancelled" in page.inner_text(".msg.success")
    campaign = Campaign.objects.get(name="Cancel me")
    assert campaign.status == Campaign.Status.CANCELLED
    assert re.search(r"cancelled by staffer: wrong held-out set", page.inner_text("#live"))
    # The Flower run itself was stopped on the SuperLink, not just marked in the database.
    superlink = control.client(live_platform.superlink, settings.SUPERLINK_ROOT_CERT)
    for _ in range(30):
        state = control.run_state(superlink, int(campaign.flwr_run_id))
        if state.finished:
            break
        time.sleep(1)
    assert (state.status, state.sub_status) == ("finished", "stopped")

    page.click("#resume")
    page.wait_for_selector("#live-state[data-status='completed']", timeout=CAMPAIGN_SECONDS * 1000)
    campaign.refresh_from_db()
    assert campaign.release.repo_id  # auto-published on completion
    assert sorted(campaign.rounds.values_list("number", flat=True)) == [0, 1]
    entries = AuditEntry.objects.order_by("at", "pk")
    actions = list(entries.exclude(actor_name="platform").values_list("action", flat=True))
    assert actions == ["campaign.create", "campaign.launch", "campaign.cancel", "campaign.resume"]
    # Each Flower run is an attempt the platform logs: started, ended (cancelled), started again, completed.
    runs = [(e.action, e.detail.get("attempt")) for e in entries.filter(actor_name="platform")]
    assert runs == [("campaign.attempt", 1), ("campaign.attempt-end", 1), ("campaign.attempt", 2),
                    ("campaign.attempt-end", 2)]  # fmt: skip
