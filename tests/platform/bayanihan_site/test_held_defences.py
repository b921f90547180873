"""What the security review (docs/security.md) found holding, kept held: each is a regression test for one defence
not covered elsewhere (enrollment and heartbeat: community/; report API: campaigns/test_report_api.py; traversal,
yanked, verify: releases/ and federation/test_verify*.py; console permissions: console/test_permissions.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client

from campaigns.models import BaseCheckpoint, Campaign
from community.models import Contributor, Node
from community.services import enrollment_token_create, node_enroll
from console import charts

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-pass-phrase-42"
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
REPO = Path(__file__).resolve().parents[3]


def _approved(name: str = "ana") -> Contributor:
    user = get_user_model().objects.create_user(name, f"{name}@example.org", PASSWORD)
    return Contributor.objects.create(user=user, display_name=name, status=Contributor.Status.APPROVED)


def _pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- enrollment tokens and keys (refused before any SuperLink is asked) ------------------------------------------


@pytest.mark.parametrize("token", ["", " ", "bye_", "bye_" + "A" * 43])
def test_empty_and_unknown_tokens_are_refused(token):
    _approved()
    with pytest.raises(PermissionError, match="not valid"):
        node_enroll(token=token, public_key=_pem(ec.generate_private_key(ec.SECP384R1())), name="n")


def test_rsa_and_non_nist_keys_are_refused():
    ana = _approved()
    token, _ = enrollment_token_create(contributor=ana)
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256K1()),
    ):
        with pytest.raises(ValidationError, match="NIST curve"):
            node_enroll(token=token, public_key=_pem(key), name="n")
    assert not Node.objects.exists()


def test_an_exact_duplicate_key_is_refused():
    ana = _approved()
    pem = _pem(ec.generate_private_key(ec.SECP384R1()))
    Node.objects.create(contributor=ana, name="first", public_key=pem)
    token, _ = enrollment_token_create(contributor=ana)
    with pytest.raises(ValidationError, match="already enrolled"):
        node_enroll(token=token, public_key=pem, name="again")


# --- report API: no token, and no telling which campaigns exist ----------------------------------------------------


@pytest.fixture
def campaign(tmp_path) -> Campaign:
    base = BaseCheckpoint.objects.create(name="b", hf_id="org/b", path=str(tmp_path))
    return Campaign.objects.create(
        name="c", base_model=base, data_task="t", heldout_path="h", status=Campaign.Status.RUNNING
    )


def test_report_api_refuses_a_missing_token(client, campaign):
    response = client.post(f"/api/v1/campaigns/{campaign.pk}/events", {"type": "x"}, content_type="application/json")
    assert response.status_code == 403


def test_report_api_answers_an_unknown_campaign_like_a_wrong_token(client, campaign):
    """13.16: a 404 for unknown ids and 403 for known ones let anyone list campaigns."""
    answers = []
    for campaign_id in (campaign.pk, campaign.pk + 1000):
        for url in (f"/api/v1/campaigns/{campaign_id}/events", f"/api/v1/campaigns/{campaign_id}/rounds/1/files/x"):
            method = client.put if url.endswith("/x") else client.post
            response = method(url, b"{}", content_type="application/json", headers={"Authorization": "Bearer wrong"})
            answers.append((response.status_code, response.content))
    assert len(set(answers[0::2])) == 1 and len(set(answers[1::2])) == 1 and answers[0][0] == 403


# --- escaping ------------------------------------------------------------------------------------------------------


def test_names_reasons_and_notes_are_escaped_on_every_page(client, campaign, release_free_settings):
    staff = get_user_model().objects.create_user("staffer", "s@x.org", PASSWORD, is_staff=True)
    ana = _approved()
    ana.display_name = ana.status_reason = XSS
    ana.save()
    Node.objects.create(contributor=ana, name=XSS, status=Node.Status.SUSPENDED, status_reason=XSS)
    campaign.name = campaign.card_notes = XSS
    campaign.save()
    client.force_login(staff)
    for url in ("/console/people/", f"/console/campaigns/{campaign.pk}/", "/console/campaigns/", "/console/"):
        page = client.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page, url
    client.force_login(ana.user)
    page = client.get("/me/").content.decode()
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.fixture
def release_free_settings(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    return settings


def test_chart_titles_and_labels_are_escaped():
    svg = str(charts.bar_chart(XSS, [XSS, "2"], [charts.Series(XSS, [1.0, 2.0])], y_title=XSS, x_title=XSS))
    svg += str(charts.line_chart(XSS, [XSS, "2"], [charts.Series(XSS, [1.0, 2.0])], y_title=XSS))
    assert "<script>" not in svg and "<img" not in svg and "&lt;script&gt;" in svg


# --- redirects, CSRF/Origin, Host -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "http:evil.example"])
def test_login_never_redirects_off_site(client, target):
    get_user_model().objects.create_user("ana", "a@x.org", PASSWORD)
    response = client.post(f"/login/?next={target}", {"username": "ana", "password": PASSWORD})
    assert response.status_code == 302 and "evil.example" not in response["Location"]


def test_a_form_post_from_another_origin_is_refused(settings):
    settings.ALLOWED_HOSTS = ["site.example"]
    client = Client(enforce_csrf_checks=True, HTTP_HOST="site.example")
    page = client.get("/login/", secure=True)
    token = page.cookies["csrftoken"].value
    data = {"username": "x", "password": "y", "csrfmiddlewaretoken": token}
    post = lambda origin: client.post("/login/", data, secure=True, headers={"Origin": origin})  # noqa: E731
    assert post("https://evil.example").status_code == 403
    assert post("http://site.example").status_code == 403  # a downgraded origin is another origin
    assert post("https://site.example").status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "localhost:8000@evil.example"])
def test_a_bad_host_header_is_a_400(client, host):
    assert client.get("/releases/", HTTP_HOST=host).status_code == 400


# --- deployment defaults ---------------------------------------------------------------------------------------


def _settings_in_fresh_process(tmp_path: Path, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "HTTPS", "SECURE_COOKIES", "DATABASE_URL")}
    clean.update(BAYANIHAN_VAR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="bayanihan_site.settings", **env)
    code = (
        "import sys; sys.path[:0] = ['platform', '.']; import django; django.setup(); from django.conf import settings"
        " as s; from bayanihan_site.celery import app;"
        " print(s.DEBUG, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS,"
        " getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.SECURE_SSL_REDIRECT,"
        " app.conf.task_serializer, 'pickle' in app.conf.accept_content)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=clean, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_debug_is_off_and_celery_never_unpickles_by_default(tmp_path):
    assert _settings_in_fresh_process(tmp_path) == "False False False 0 None False json False"


def test_an_https_deployment_gets_secure_cookies_hsts_and_the_proxy_header(tmp_path):
    out = _settings_in_fresh_process(tmp_path, HTTPS="1")
    assert out == "False True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') True json False"


def test_node_private_keys_are_0600(tmp_path):
    from federation import pki

    old = os.umask(0o022)
    try:
        private, _ = pki.ensure_node_key(tmp_path / "node")
    finally:
        os.umask(old)
    assert private.stat().st_mode & 0o777 == 0o600
