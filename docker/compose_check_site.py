"""The site's side of `make compose-check`, run inside the web container (`python docker/compose_check_site.py
STEP`): the same services the console and `make demo` use, so the campaign goes web → Redis → worker → SuperLink
container → ServerApp → nodes on the host, and back to the site.

  setup N   tiny base model, a demo corpus split over N contributors, one approved contributor and one enrollment
            token per node: prints JSON {"model", "corpus", "tokens": {name: token}}
  launch N  a 1-round campaign for N nodes: prints its id
  wait ID   follows it until it ends; prints each round and the release's files (URL path, sha256, size); exits 0
            only when it completed with every node in every round
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bayanihan_site.settings")
django.setup()

from django.conf import settings  # noqa: E402

from campaigns.models import BaseCheckpoint, Campaign  # noqa: E402
from campaigns.services.actions import campaign_launch  # noqa: E402
from campaigns.services.setup import campaign_create  # noqa: E402
from community.services import enrollment_token_create  # noqa: E402
from federation.corpus import build_demo_corpus  # noqa: E402
from stack.basemodels import ensure_base_model  # noqa: E402
from stack.local_nodes import local_contributor  # noqa: E402

CORPUS = Path(settings.VAR_DIR) / "compose-check" / "corpus"


def setup(nodes: int) -> None:
    base = ensure_base_model(tiny=True, progress=lambda m: print(m, file=sys.stderr))
    manifest = build_demo_corpus(CORPUS, n_contributors=nodes, max_chunks_per_node=40, max_heldout=16)
    tokens = {name: enrollment_token_create(contributor=local_contributor(name))[0] for name in manifest["nodes"]}
    print(json.dumps({"model": str(base.path), "corpus": str(CORPUS), "tokens": tokens}))


def launch(nodes: int) -> None:
    campaign = campaign_create(
        name=f"compose check {time.strftime('%Y-%m-%d %H:%M:%S')}",
        base_model=BaseCheckpoint.objects.get(name="tiny-llama"),
        data_task="python-docs",
        heldout_path=str(CORPUS / "heldout.jsonl"),
        train_config={"local-steps": 2, "seq-len": 32, "threads": 1},
        num_rounds=1,
        min_nodes=nodes,
    )
    campaign_launch(campaign=campaign)
    print(campaign.pk)


def wait(pk: int, timeout: float = 900) -> int:
    deadline = time.monotonic() + timeout
    campaign = Campaign.objects.get(pk=pk)
    while not campaign.is_terminal and time.monotonic() < deadline:
        time.sleep(3)
        campaign.refresh_from_db()
    nodes = campaign.min_nodes
    complete = True
    for r in campaign.rounds.order_by("number"):
        print(f"round {r.number}: participants {r.participants}, failures {r.failures}, held-out loss {r.eval_loss}")
        if r.number > 0 and (r.participants != nodes or r.failures):
            complete = False
    print(f"campaign #{pk}: {campaign.status} {campaign.status_reason or ''}".rstrip())
    release = getattr(campaign, "release", None)
    if release is not None:
        print(f"release {release.repo_id} revision {release.revision}: {release.files.count()} files")
        for f in release.files.order_by("path"):  # the host downloads each through the published web port
            print(f"file /releases/{release.repo_id}/{release.revision}/{f.path} {f.sha256} {f.size}")
    if campaign.status != Campaign.Status.COMPLETED or not campaign.rounds.filter(number__gt=0).exists():
        return 1
    return 0 if complete else 1


if __name__ == "__main__":
    step, arg = sys.argv[1], int(sys.argv[2])
    if step == "setup":
        setup(arg)
    elif step == "launch":
        launch(arg)
    elif step == "wait":
        sys.exit(wait(arg))
    else:
        sys.exit(f"unknown step {step!r}: setup, launch or wait")
