"""The SuperLink container: flower-superlink with the platform's TLS, node authentication and in-memory state, bound
to the compose network (never published: its Control and Runtime APIs have no authentication), then every active
node's key registered again (its state is in memory), as `make serve` does on the host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")
django.setup()

from django.conf import settings  # noqa: E402

from community.services import node_keys_sync  # noqa: E402
from federation import pki, procs  # noqa: E402
from stack.runner import superlink_tls  # noqa: E402


def main() -> int:
    port = int(settings.SUPERLINK_ADDRESS.rsplit(":", 1)[1])
    state = Path(settings.VAR_DIR) / "superlink"
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls = superlink_tls()  # made once on the shared volume; web, worker and proxy read the CA and certificate there
    secret = Path(settings.LINK_SECRET_FILE)
    pki.ensure_secret_file(secret)
    env = procs.flower_env(
        state / "flwr-home",
        {"BAYANIHAN_LINK_SECRET_FILE": str(secret), "BAYANIHAN_SITE_URL": settings.SITE_URL},
        task_poll_seconds=procs.SUPERLINK_TASK_POLL_SECONDS,
    )
    proc = subprocess.Popen(procs.superlink_command(state, "0.0.0.0", port, tls), env=env, cwd=state)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    procs.wait_http(f"https://127.0.0.1:{port}/health", 60, proc, verify=str(tls["ca"]))
    result = node_keys_sync()
    print(f"SuperLink up on :{port}; node keys registered: {len(result.registered)}", flush=True)
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
