"""The site's front proxy: Caddy on the public web port, in front of the web workers on a private Unix socket.

It forwards every request to the workers and sends stored files itself: a download view answers with
`X-Accel-Redirect` (bayanihan_site/accel.py) after checking access, ETag and Range and counting the download, and
Caddy's file_server sends the named file from DATA_DIR with sendfile(2) — no Python process copies the bytes, and a
worker is free again as soon as it has answered. The file_server is reachable only through that response header: no
route maps a request path to it, and the proxy strips X-Accel-* from client requests before they reach Django.

The same routes as a Caddyfile are in docker/Caddyfile (the container `proxy` service) and docs/deploy.md.
"""

from __future__ import annotations

from pathlib import Path

from bayanihan_site.accel import ACCEL_RANGE, ACCEL_REDIRECT
from stack.proxy import access_logging, write_config

# Request headers by which a client could make the file_server decide something Django already decided (a 304, a
# different range): removed before the file is sent, so the file_server sends exactly what Django chose.
CONDITIONAL_HEADERS = ["If-None-Match", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range"]


def _placeholder(header: str) -> str:
    """Caddy's placeholder for a header of the upstream's response (inside handle_response)."""
    return "{http.reverse_proxy.header." + header + "}"


def _accel_routes(data_dir: Path, *, ranged: bool) -> list[dict]:
    """What runs when the workers' answer carries X-Accel-Redirect: copy its headers, send the file it names (the
    range Django chose when `ranged`, else all of it)."""
    range_header = {"set": {"Range": [_placeholder(ACCEL_RANGE)]}} if ranged else {"delete": ["Range"]}
    request_headers = {**range_header, "delete": [*CONDITIONAL_HEADERS, *range_header.get("delete", [])]}
    return [
        {
            "handle": [
                # Django's headers (ETag, X-Content-SHA256, Content-Type, Content-Disposition, Cache-Control, …) go
                # out as Django set them; the file_server keeps an ETag already set. Length and range are the
                # file_server's to state, from the bytes it sends.
                {
                    "handler": "copy_response_headers",
                    "exclude": [ACCEL_REDIRECT, ACCEL_RANGE, "Content-Length", "Content-Range"],
                },
                # The file's modification time says nothing about a content-addressed blob: Django never sent one.
                {"handler": "headers", "response": {"deferred": True, "delete": ["Last-Modified"]}},
                {"handler": "rewrite", "uri": _placeholder(ACCEL_REDIRECT)},
                {"handler": "headers", "request": request_headers},
                {"handler": "file_server", "root": str(data_dir)},
            ]
        }
    ]


def site_proxy_config(
    *,
    listen: str,
    upstream_socket: Path,
    data_dir: Path,
    storage: Path,
    trusted_proxies: list[str] | None = None,
    access_log: Path | None = None,
) -> dict:
    """Caddy JSON config: plain HTTP on `listen` (host:port), everything to the workers on `upstream_socket`.

    JSON rather than a Caddyfile for the same reason as the fleet proxy (stack/proxy.py): every directive explicit,
    admin API off. Caddy sets X-Forwarded-For/-Proto/-Host itself and ignores a client's own unless the client is in
    `trusted_proxies` (a TLS load balancer in front): the workers take the client address from X-Forwarded-For, so
    the login limits (bayanihan_site/throttle.py) see each client, not the proxy.
    """
    forward = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": f"unix/{upstream_socket}"}],
        "headers": {"request": {"delete": [ACCEL_REDIRECT, ACCEL_RANGE]}},
        # The first that matches applies: a range when Django chose one, else the whole file.
        "handle_response": [
            {
                "match": {"headers": {ACCEL_REDIRECT: ["*"], ACCEL_RANGE: ["*"]}},
                "routes": _accel_routes(data_dir, ranged=True),
            },
            {"match": {"headers": {ACCEL_REDIRECT: ["*"]}}, "routes": _accel_routes(data_dir, ranged=False)},
        ],
    }
    server: dict = {
        "listen": [listen],
        "routes": [{"handle": [forward]}],
        "automatic_https": {"disable": True},
    }
    if trusted_proxies:
        server["trusted_proxies"] = {"source": "static", "ranges": trusted_proxies}
    if access_log is not None:
        server["logs"] = {"default_logger_name": "access"}
    config: dict = {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {"http": {"servers": {"site": server}}},
    }
    if access_log is not None:
        config["logging"] = access_logging(access_log)
    return config


def write_site_proxy_config(folder: Path, **kwargs: object) -> Path:
    return write_config(folder, site_proxy_config(storage=folder / "data", **kwargs))  # type: ignore[arg-type]
