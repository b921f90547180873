"""Password-guessing limits for the site login and the admin login, kept in Django's cache.

A cache-based limiter rather than django-axes: it needs no extra middleware, authentication backend or tables in
every deployment, and the site already keeps the heartbeat limit in the same cache. Failures are counted per
username (so one account cannot be guessed slowly from many addresses) and per client address (so one client cannot
sweep many usernames); past the limit both logins answer 429 with Retry-After until the window has passed. A correct
password during the block is refused too: otherwise the block would tell the guesser when it had guessed right.

The default cache is per process: with several web processes set CACHE_REDIS_URL so they share one count.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

# One client address may fail this many times the per-username limit (it may be a shared NAT or an office).
ADDRESS_FACTOR = 4


def _address(request: HttpRequest | None) -> str:
    # REMOTE_ADDR, not X-Forwarded-For: a client sets that header itself unless a proxy we trust rewrites it.
    return (request.META.get("REMOTE_ADDR", "") if request is not None else "") or "unknown"


def _keys(scope: str, request: HttpRequest | None, username: str) -> list[tuple[str, int]]:
    limit = settings.LOGIN_FAILURES_ALLOWED if scope == "login" else settings.SIGNUPS_PER_HOUR
    name = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    keys = [(f"throttle:{scope}:addr:{_address(request)}", limit * (ADDRESS_FACTOR if scope == "login" else 1))]
    if scope == "login" and username:
        keys.append((f"throttle:{scope}:user:{name}", limit))
    return keys


def _window(scope: str) -> int:
    return settings.LOGIN_FAILURE_WINDOW_SECONDS if scope == "login" else 3600


def retry_after(scope: str, request: HttpRequest, username: str = "") -> int:
    """Seconds until this request may try again; 0 when it may now."""
    now = time.time()
    wait = 0.0
    for key, limit in _keys(scope, request, username):
        count, started = cache.get(key, (0, now))
        if count >= limit:
            wait = max(wait, started + _window(scope) - now)
    return math.ceil(wait) if wait > 0 else 0


def count(scope: str, request: HttpRequest | None, username: str = "") -> None:
    """One more event (a failed login, a sign-up) for this client and username, within the scope's window."""
    now = time.time()
    for key, _ in _keys(scope, request, username):
        number, started = cache.get(key, (0, now))
        remaining = max(1, math.ceil(started + _window(scope) - now))
        cache.set(key, (number + 1, started), timeout=remaining)


def too_many(seconds: int, what: str) -> HttpResponse:
    minutes = max(1, math.ceil(seconds / 60))
    response = HttpResponse(
        f"<!doctype html><title>Too many attempts</title><h1>Too many attempts</h1>"
        f"<p>Too many {what} for this account or from your address. Try again in {minutes} minute(s).</p>",
        status=429,
        content_type="text/html; charset=utf-8",
    )
    response["Retry-After"] = str(seconds)
    return response


def login_throttled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a login view (the site's LoginView, the admin's login): a blocked POST never reaches authentication."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            wait = retry_after("login", request, request.POST.get("username", ""))
            if wait:
                return too_many(wait, "failed sign-ins")
        return view(request, *args, **kwargs)

    return wrapped


@receiver(user_login_failed)
def _login_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    count("login", request, str(credentials.get("username", "")))


@receiver(user_logged_in)
def _logged_in(sender: Any, request: HttpRequest | None, user: Any, **_: Any) -> None:
    # The account's own count starts again; the address's count does not (logging into one's own account must not
    # reset a sweep over other usernames).
    key = _keys("login", request, user.get_username())[-1][0]
    cache.delete(key)
