"""One campaign across separate hosts over home links.

Network namespaces play the machines (tests/platform/multihost.py): `site` runs web (HTTPS) and the Celery worker
with a PostgreSQL and a Redis of its own on its loopback; `link` runs the SuperLink on a private network it shares
with the site only, and the Fleet-only proxy on the public one; two node hosts reach the public network through
shaped home links (60 ms ± 10 ms, 0.5 % loss, 20 Mbit/s up: tests/platform/wanlink.py). Each node is a contributor's:
its own venv made by `pip install` of this checkout, enrolled with `python -m federation join --site https://<site>`.

Mid-campaign node-2's line is cut for CUT_SECONDS (default 120: `MULTIHOST_CUT_SECONDS`; a shorter cut shortens the
round timeout with it, so the node still misses a round). Asserted: the campaign completes; every round has both
nodes but the one node-2 missed, where it is recorded failed, and it trains again after its line is back; the
SuperLink's certificate names the addresses nodes and the site dial and is checked by both (nothing "insecure" in
any command line or config); the Control API is not reachable from a node host. Bytes per node per round on the
shaped link (`ip -s link` counters on the node's end) are printed and kept as a test property.

Skips, saying why, where namespaces cannot be made (not root, no `ip`, no TAP devices) or PostgreSQL/Redis server
binaries are missing. Every namespace, link and process goes at the end, also on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from multihost import (
    ContributorVenvs,
    Hosts,
    PrivatePostgres,
    Shaping,
    build_contributor_venvs,
    private_tempdir,
    redis_command,
    unavailable,
)

from federation import pki, procs

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CUT_SECONDS = float(os.environ.get("MULTIHOST_CUT_SECONDS", "120"))
# Shorter than the cut, so the cut node cannot come back inside the round it misses; longer than half the cut, so a
# next round that still counts it as connected (the SuperLink sees a node online for 60 s after its last heartbeat)
# lasts until its line is back and it can answer; longer than a tiny round on 2 busy cores. Hence cuts of at least
# 45 s (run here: 120 s, where the round with the dead node ends once the SuperLink sees it offline).
ROUND_TIMEOUT = int(min(90, max(20, CUT_SECONDS * 0.75)))
if CUT_SECONDS < 45:
    raise ValueError(f"MULTIHOST_CUT_SECONDS={CUT_SECONDS:g}: use at least 45 (the comment above says why)")
NUM_ROUNDS = 4  # the cut falls in round 2 or 3; a round after it shows the node back
WEB_PORT, SUPERLINK_PORT, FLEET_PORT = 8443, 9091, 9093
NODES = ("node-1", "node-2")
CUT_NODE = "node-2"


@pytest.fixture(scope="session")
def contributor_venvs(tmp_path_factory: pytest.TempPathFactory) -> ContributorVenvs:
    reason = unavailable()
    if reason:
        pytest.skip(f"multi-host test: {reason}")
    venvs = build_contributor_venvs(REPO, tmp_path_factory.mktemp("contributors"), len(NODES))
    print(f"\ncontributor venvs: 1 wheel + {len(NODES)} × (python -m venv, pip install) took {venvs.seconds:.0f} s",
          file=sys.stderr)  # fmt: skip
    return venvs


@dataclass
class MultiHost:
    hosts: Hosts
    root: Path
    supervisor: procs.Supervisor
    postgres: PrivatePostgres
    site_env: dict[str, str]
    link_tls: dict[str, Path]
    site_ca: Path
    node_homes: dict[str, Path] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)  # what was started, for the "no insecure" check

    @property
    def site_url(self) -> str:
        return f"https://{self.hosts.site}:{WEB_PORT}"

    def start(self, name: str, role: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        command = self.hosts.exec(role, argv)
        self.commands.append(command)
        self.supervisor.start(name, command, env=env, cwd=cwd)

    def on(
        self, role: str, argv: list[str], timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """A command run inside `role`'s host."""
        return subprocess.run(self.hosts.exec(role, argv), capture_output=True, text=True, timeout=timeout, env=env)

    def site_python(self, code: str, timeout: float = 120) -> Any:
        """Python with the site's Django settings, on the site host; returns what its last line prints as JSON."""
        result = subprocess.run(
            self.hosts.exec("site", [sys.executable, "-c", "import django, json\ndjango.setup()\n" + code]),
            env=self.site_env, cwd=REPO / "platform", capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def wait_https(self, role: str, url: str, ca: Path, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervisor.check()
            if self.on(role, ["curl", "-sf", "-o", "/dev/null", "--max-time", "5", "--cacert", str(ca), url],
                       timeout=20).returncode == 0:  # fmt: skip
                return
            time.sleep(0.5)
        raise TimeoutError(f"{url} did not answer from {role} within {timeout:.0f}s")


def _start_site(mh: MultiHost) -> None:
    hosts, root = mh.hosts, mh.root
    mh.postgres.init()
    mh.start("postgres", "site", mh.postgres.command(), os.environ.copy(), mh.postgres.folder)
    mh.postgres.wait()
    mh.postgres.query("postgres", "CREATE DATABASE bayanihan")
    (root / "site" / "redis").mkdir(parents=True)
    mh.start("redis", "site", redis_command(root / "site" / "redis"), os.environ.copy(), root / "site" / "redis")
    migrate = mh.on("site", [sys.executable, str(REPO / "manage.py"), "migrate", "--verbosity", "0"], timeout=300,
                    env=mh.site_env)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    mh.start("worker", "site", [sys.executable, "-m", "celery", "-A", "bayanihan_site", "worker", "--pool=solo",
                                "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
             mh.site_env, REPO / "platform")  # fmt: skip
    tls = pki.ensure_superlink_tls(root / "site" / "tls", [hosts.site])  # the site's HTTPS certificate
    mh.start("web", "site", [sys.executable, "-m", "uvicorn", "bayanihan_site.asgi:application", "--host", hosts.site,
                             "--port", str(WEB_PORT), "--ssl-certfile", str(tls["cert"]), "--ssl-keyfile",
                             str(tls["key"]), "--no-access-log"], mh.site_env, REPO / "platform")  # fmt: skip


def _superlink_certs(hosts: Hosts, folder: Path) -> dict[str, Path]:
    """The operator's command on the link host: a CA and a SuperLink certificate for the addresses dialled there."""
    from stack.runner import platform_env

    env = platform_env(
        BAYANIHAN_VAR=str(folder / "var"),
        SUPERLINK_TLS_DIR=str(folder / "tls"),
        SUPERLINK_HOSTNAMES=f"{hosts.link},{hosts.link_private}",
    )
    made = subprocess.run(hosts.exec("link", [sys.executable, str(REPO / "manage.py"), "superlink_certs"]),
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    lines = [line.split(": ", 1) for line in made.stdout.splitlines()]
    return {role: Path(path) for role, path in lines if role in ("ca", "cert", "key")}


def _start_link(mh: MultiHost, secret: Path) -> None:
    hosts, root = mh.hosts, mh.root
    state = root / "link" / "superlink"
    state.mkdir(parents=True, mode=0o700)
    env = procs.flower_env(
        state / "flwr-home",
        # The ServerApp reports to the site over HTTPS: it trusts the site's CA (a public CA's in production).
        {"BAYANIHAN_LINK_SECRET_FILE": str(secret), "BAYANIHAN_SITE_URL": mh.site_url,
         "REQUESTS_CA_BUNDLE": str(mh.site_ca)},
        task_poll_seconds=procs.SUPERLINK_TASK_POLL_SECONDS,
    )  # fmt: skip
    # On the private network only: its Control and Runtime APIs have no authentication (docs/deploy.md).
    mh.start("superlink", "link", procs.superlink_command(state, hosts.link_private, SUPERLINK_PORT, mh.link_tls),
             env, state)  # fmt: skip
    from stack import proxy

    folder = root / "link" / "proxy"
    config = proxy.write_fleet_proxy_config(
        folder, listen=f"{hosts.link}:{FLEET_PORT}", upstream=f"{hosts.link_private}:{SUPERLINK_PORT}",
        tls=mh.link_tls, access_log=mh.supervisor.log_dir / "proxy-access.log",
    )  # fmt: skip
    mh.start("proxy", "link", proxy.caddy_command(config), proxy.caddy_env(folder), folder)


@pytest.fixture
def multihost(contributor_venvs, tiny_checkpoint, tiny_corpus) -> Iterator[MultiHost]:
    from stack.runner import platform_env

    root = private_tempdir("bayanihan-multihost-")
    root.chmod(0o711)  # the postgres user must reach its folder inside
    hosts = Hosts(root / "hosts")
    supervisor = procs.Supervisor(root / "logs")
    try:
        hosts.open()
        link_tls = _superlink_certs(hosts, root / "link")
        secret = root / "link" / "keys" / "link-secret"
        pki.ensure_secret_file(secret)
        site_ca = root / "site" / "tls" / "ca.crt"
        site_env = platform_env(
            BAYANIHAN_VAR=str(root / "site" / "var"),
            DATABASE_URL="postgres://postgres@127.0.0.1:5432/bayanihan",
            REDIS_URL="redis://127.0.0.1:6379/0",
            CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
            CELERY_QUEUE="bayanihan",
            CACHE_REDIS_URL="",
            SECRET_KEY=secrets.token_urlsafe(40),
            SITE_URL=f"https://{hosts.site}:{WEB_PORT}",
            ALLOWED_HOSTS=hosts.site,
            HTTPS="1",
            SUPERLINK_ADDRESS=f"{hosts.link_private}:{SUPERLINK_PORT}",
            SUPERLINK_PUBLIC_ADDRESS=f"{hosts.link}:{FLEET_PORT}",
            SUPERLINK_ROOT_CERT=str(link_tls["ca"]),  # a copy of the link's ca.crt on the site host
            # The site holds only the secret's hash (`sha256sum link-secret` on the link host), not the secret.
            LINK_SECRET_SHA256=hashlib.sha256(secret.read_bytes()).hexdigest(),
            LINK_SECRET_FILE=str(root / "site" / "no-link-secret-here"),
            CAMPAIGN_POLL_SECONDS="1",
        )
        mh = MultiHost(hosts, root, supervisor, PrivatePostgres(root / "pg"), site_env, link_tls, site_ca)
        _start_site(mh)
        _start_link(mh, secret)
        mh.wait_https("site", f"{mh.site_url}/releases/", site_ca)
        mh.wait_https("site", f"https://{hosts.link_private}:{SUPERLINK_PORT}/health", link_tls["ca"])
        mh.wait_https("site", f"https://{hosts.link}:{FLEET_PORT}/health", link_tls["ca"])
        tokens = mh.site_python(
            "from campaigns.services.setup import base_model_register\n"
            "from community.services import enrollment_token_create\n"
            "from stack.local_nodes import local_contributor\n"
            f"base_model_register(path={str(tiny_checkpoint)!r}, name='tiny', hf_id='test/tiny-llama')\n"
            f"print(json.dumps({{n: enrollment_token_create(contributor=local_contributor(n))[0] for n in {NODES!r}}}))"
        )
        for index, name in enumerate(NODES, start=1):
            hosts.add_node(index, Shaping())
            python = contributor_venvs.pythons[index - 1]
            home = root / "nodes" / name
            mh.node_homes[name] = home
            home.parent.mkdir(parents=True, exist_ok=True)
            env = contributor_venvs.env(python) | {"REQUESTS_CA_BUNDLE": str(site_ca)}  # the site's CA, as above
            mh.start(f"join-{name}", name,
                     [str(python), "-m", "federation", "join", "--site", mh.site_url, "--token", tokens[name],
                      "--data", str(tiny_corpus / name), "--model", str(tiny_checkpoint), "--name", name,
                      "--home", str(home), "--interval", "3",
                      # Both nodes share this machine's memory with the platform and other tests.
                      "--min-memory", "0"],
                     env, home.parent)  # fmt: skip
        yield mh
    finally:
        supervisor.stop_all(timeout=10)
        left = hosts.close()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        shutil.rmtree(root, ignore_errors=True)
        assert not left and hosts.tag not in listed, f"namespaces left behind: {listed}"


def _dials_loopback_runtime(command: list[str]) -> bool:
    """A process of Flower's in-host app runtime (a SuperNode's SuperExec or ClientApp) dialling loopback."""
    if "--runtime-api-address" not in command:
        return False
    return command[command.index("--runtime-api-address") + 1].startswith("127.0.0.1:")


def _rounds(mh: MultiHost, campaign_id: int) -> tuple[list[int], str]:
    recorded = mh.postgres.query(
        "bayanihan", "SELECT number FROM campaigns_round WHERE campaign_id = %s AND eval_loss IS NOT NULL "
        "ORDER BY number", (campaign_id,),
    )  # fmt: skip
    (status,) = mh.postgres.query("bayanihan", "SELECT status FROM campaigns_campaign WHERE id = %s", (campaign_id,))
    return [r[0] for r in recorded or []], status[0]


def test_a_campaign_across_hosts_over_home_links_survives_a_cut_line(multihost, tiny_corpus, record_testsuite_property):
    mh, hosts = multihost, multihost.hosts
    campaign_id = mh.site_python(
        "from campaigns.models import BaseCheckpoint\n"
        "from campaigns.services.actions import campaign_launch\n"
        "from campaigns.services.setup import campaign_create\n"
        "c = campaign_create(name='multi-host', base_model=BaseCheckpoint.objects.get(name='tiny'),"
        " data_task='python-docs',"
        f" heldout_path={str(tiny_corpus / 'heldout.jsonl')!r},"
        " train_config={'local-steps': 2, 'seq-len': 32, 'batch-size': 2, 'threads': 1},"
        f" num_rounds={NUM_ROUNDS}, min_nodes=2, round_timeout={ROUND_TIMEOUT})\n"
        "campaign_launch(campaign=c)\n"
        "print(c.pk)"
    )
    started = time.monotonic()
    boundaries: dict[int, dict[str, tuple[int, int]]] = {}  # round → each node's counters when it was recorded
    launch_counters = {n: hosts.counters(n) for n in NODES}
    cut_at = restored_at = None
    commands_seen: list[list[str]] = []
    status = ""
    while time.monotonic() - started < 900:
        mh.supervisor.check()  # a process that died fails the test with its log tail
        numbers, status = _rounds(mh, campaign_id)
        for n in numbers:
            boundaries.setdefault(n, {node: hosts.counters(node) for node in NODES})
        if cut_at is None and 1 in numbers:
            # Everything runs by now: note every command line on every host, then cut node-2's line.
            commands_seen = [p.cmdline() for p in map(psutil.Process, hosts.pids()) if p.is_running()]
            hosts.cut(CUT_NODE)
            cut_at = time.monotonic()
            print(f"cut {CUT_NODE}'s line after round 1 ({cut_at - started:.0f} s in), for {CUT_SECONDS:.0f} s")
        if cut_at is not None and restored_at is None and time.monotonic() - cut_at >= CUT_SECONDS:
            hosts.restore(CUT_NODE)
            restored_at = time.monotonic()
            print(f"restored {CUT_NODE}'s line ({restored_at - started:.0f} s in)")
        if status in ("completed", "failed", "stopped", "cancelled"):
            break
        time.sleep(1)
    elapsed = time.monotonic() - started
    if restored_at is None and cut_at is not None:
        hosts.restore(CUT_NODE)
    summary = mh.site_python(
        "from campaigns.models import Campaign\n"
        f"c = Campaign.objects.get(pk={campaign_id})\n"
        "rounds = {r.number: {p.node.name: {'error': p.error, 'samples': p.samples, 'bytes_up': p.bytes_up,"
        " 'bytes_down': p.bytes_down} for p in r.participations.select_related('node')}"
        " for r in c.rounds.exclude(eval_loss=None).order_by('number')}\n"
        "attempts = [(a.number, a.outcome, a.from_round, a.reason) for a in c.attempts.order_by('number')]\n"
        "print(json.dumps({'status': c.status, 'reason': c.status_reason, 'rounds': rounds, 'attempts': attempts,"
        " 'release': c.release is not None}))"
    )
    print(f"campaign {summary['status']} in {elapsed:.0f} s; attempts {summary['attempts']}")

    # Bytes per node per round on the shaped link: counters between the site recording round n-1 and round n.
    table = {}
    previous = launch_counters
    for n in sorted(boundaries):
        if n == 0:
            previous = boundaries[0]
            continue
        table[n] = {node: {"up": boundaries[n][node][0] - previous[node][0],
                           "down": boundaries[n][node][1] - previous[node][1]} for node in NODES}  # fmt: skip
        previous = boundaries[n]
    print("bytes on each node's shaped link per round (up/down), and what Flower counted for its messages:")
    for n, row in table.items():
        cells = [f"{node} {row[node]['up']:>9,}/{row[node]['down']:>9,} B (flower "
                 f"{summary['rounds'][str(n)].get(node, {}).get('bytes_up', 0):,}/"
                 f"{summary['rounds'][str(n)].get(node, {}).get('bytes_down', 0):,})" for node in NODES]  # fmt: skip
        print(f"  round {n}: " + " · ".join(cells))
    record_testsuite_property("multihost_bytes_per_node_per_round", json.dumps(table))
    record_testsuite_property("multihost_campaign_seconds", round(elapsed))

    assert summary["status"] == "completed", summary
    rounds = {int(k): v for k, v in summary["rounds"].items()}
    assert sorted(rounds) == list(range(NUM_ROUNDS + 1)), rounds
    missed = [n for n in range(1, NUM_ROUNDS + 1) if rounds[n].get(CUT_NODE, {}).get("error")]
    assert len(missed) == 1, f"{CUT_NODE} should miss exactly the round its line was cut in: {rounds}"
    for n in range(1, NUM_ROUNDS + 1):
        for node in NODES:
            row = rounds[n].get(node)
            assert row is not None, f"round {n} has no row for {node}: {rounds[n]}"
            if (n, node) == (missed[0], CUT_NODE):
                assert row["samples"] == 0
                continue
            assert row["error"] == "" and row["samples"] > 0, f"round {n}, {node}: {row}"
    assert missed[0] < NUM_ROUNDS, "the cut node never trained again after its line came back"
    assert summary["release"]
    for n, row in table.items():
        if n not in missed:
            assert all(row[node]["up"] > 0 for node in NODES), f"no upstream bytes counted in round {n}: {row}"

    # TLS: the SuperLink certificate names exactly the addresses dialled (the proxy's public one for nodes, the
    # private one for the site), and nodes and site verify it; nothing anywhere runs or is configured insecure.
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(mh.link_tls["cert"].read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(ip) for ip in names.get_values_for_type(x509.IPAddress)) == [hosts.link, hosts.link_private]
    for name in NODES:
        state = json.loads((mh.node_homes[name] / "node.json").read_text())
        assert state["superlink"] == f"{hosts.link}:{FLEET_PORT}" and state["site"] == mh.site_url
        assert (mh.node_homes[name] / "ca.crt").read_bytes() == mh.link_tls["ca"].read_bytes()
    supernodes = [c for c in commands_seen if any(a.endswith("flower-supernode") for a in c)]
    assert len(supernodes) == 2, commands_seen
    for command in supernodes:
        assert command[command.index("--superlink") + 1] == f"{hosts.link}:{FLEET_PORT}"
        assert "--root-certificates" in command
    # One exception, inside each node host and not configurable in Flower 1.42: a SuperNode starts its own
    # flower-superexec, which starts each ClientApp, both with `--insecure` towards the SuperNode's app-runtime API on
    # the node's loopback (flwr/supernode/start_client_internal.py). They must dial loopback; nothing else may say
    # "insecure".
    local = [c for c in commands_seen if _dials_loopback_runtime(c)]
    assert sum(1 for c in local if any(Path(a).name == "flower-superexec" for a in c[:2])) == len(NODES), local
    everything = [" ".join(c) for c in commands_seen + mh.commands if c not in local]
    config_files = [mh.root / "link" / "proxy" / "caddy.json", *(home / "node.json" for home in mh.node_homes.values())]
    config_files += [p for home in mh.node_homes.values() for p in home.rglob("*.toml")]
    configs = [p.read_text() for p in config_files]
    assert not [c for c in everything + configs if "insecure" in c.lower()]
    # A node verifies the proxy's certificate against the name it dials; the Control API is not reachable from it.
    ca = str(mh.link_tls["ca"])
    health = mh.on("node-1", ["curl", "-sf", "--cacert", ca, f"https://{hosts.link}:{FLEET_PORT}/health"])
    assert health.returncode == 0, health.stderr
    control = mh.on("node-1", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", ca, "-X", "POST",
                               f"https://{hosts.link}:{FLEET_PORT}/v1/control/list-runs"])  # fmt: skip
    assert control.stdout == "404"
    private = mh.on("node-1", ["curl", "-s", "--max-time", "5", "--cacert", ca,
                               f"https://{hosts.link_private}:{SUPERLINK_PORT}/health"])  # fmt: skip
    assert private.returncode != 0, "a node host reached the SuperLink's private address"
