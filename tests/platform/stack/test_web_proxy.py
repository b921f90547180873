"""The front proxy's config: the file_server is reachable only through the workers' X-Accel-Redirect answer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from stack.proxy import caddy_binary
from stack.web_proxy import site_proxy_config, write_site_proxy_config


def _handlers(node: object, inside_handle_response: bool = False) -> list[tuple[str, bool]]:
    """Every handler in the config, with whether it sits inside a reverse_proxy's handle_response."""
    found = []
    if isinstance(node, dict):
        if "handler" in node:
            found.append((node["handler"], inside_handle_response))
        for key, value in node.items():
            found += _handlers(value, inside_handle_response or key == "handle_response")
    elif isinstance(node, list):
        for item in node:
            found += _handlers(item, inside_handle_response)
    return found


def _config(tmp_path: Path, **kwargs: object) -> dict:
    return site_proxy_config(
        listen="127.0.0.1:8000", upstream_socket=tmp_path / "web.sock", data_dir=tmp_path / "data",
        storage=tmp_path / "caddy", **kwargs,
    )  # fmt: skip


def test_files_are_served_only_inside_handle_response(tmp_path):
    handlers = _handlers(_config(tmp_path))
    assert ("file_server", True) in handlers
    assert [h for h in handlers if h[0] in ("file_server", "rewrite") and not h[1]] == []


def test_client_x_accel_headers_are_stripped_before_the_workers(tmp_path):
    proxy = _config(tmp_path)["apps"]["http"]["servers"]["site"]["routes"][0]["handle"][0]
    assert proxy["headers"]["request"]["delete"] == ["X-Accel-Redirect", "X-Accel-Range"]
    assert proxy["upstreams"] == [{"dial": f"unix/{tmp_path / 'web.sock'}"}]


def test_only_listed_proxies_may_set_forwarded_headers(tmp_path):
    assert "trusted_proxies" not in _config(tmp_path)["apps"]["http"]["servers"]["site"]
    server = _config(tmp_path, trusted_proxies=["10.0.0.0/8"])["apps"]["http"]["servers"]["site"]
    assert server["trusted_proxies"] == {"source": "static", "ranges": ["10.0.0.0/8"]}


def test_caddy_accepts_the_generated_config(tmp_path):
    path = write_site_proxy_config(
        tmp_path / "proxy", listen="127.0.0.1:8000", upstream_socket=tmp_path / "web.sock", data_dir=tmp_path,
        trusted_proxies=["10.0.0.0/8"], access_log=tmp_path / "access.log",
    )  # fmt: skip
    json.loads(path.read_text())
    result = subprocess.run(
        [str(caddy_binary()), "validate", "--config", str(path)], capture_output=True, text=True, timeout=60,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d"), "XDG_CONFIG_HOME": str(tmp_path / "c")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
