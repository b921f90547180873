"""Handing a file's bytes to the site's front proxy: the X-Accel-Redirect contract between Django and Caddy.

Behind the front proxy `make serve` runs (settings.DOWNLOADS_X_ACCEL; the proxy's side is stack/web_proxy.py) a view
that has decided to send a stored file answers with no body and these headers instead; Caddy drops them, keeps every
other header, and sends the named file itself with sendfile(2), so no web worker copies bytes. Caddy only acts on
them in an upstream *response*: a client sending them gets nothing (and the proxy strips them from requests).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from django.conf import settings

# The file to send, as a path under DATA_DIR (the proxy's root for these files), percent-encoded.
ACCEL_REDIRECT = "X-Accel-Redirect"
# The byte range to send ("bytes=START-END", decided by Django); absent: the whole file.
ACCEL_RANGE = "X-Accel-Range"


def accel_location(path: Path) -> str | None:
    """The X-Accel-Redirect value for `path`, or None when the front proxy is not in use or the file lies outside
    DATA_DIR (then Django streams it itself)."""
    if not settings.DOWNLOADS_X_ACCEL:
        return None
    try:
        relative = path.resolve().relative_to(Path(settings.DATA_DIR).resolve())
    except ValueError:
        return None
    return "/" + quote(relative.as_posix())
