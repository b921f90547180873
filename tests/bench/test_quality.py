"""bench-quality's plan of campaigns: its default row must be the platform's default campaign at equal total steps."""

from __future__ import annotations

from bench.quality import KINDS, default_plan, plans, quality_parser


def test_the_default_row_is_a_checkpoint_of_a_run_with_the_default_campaigns_settings():
    args = quality_parser().parse_args(["--rounds", "2", "--local-steps", "6", "--nodes", "3"])
    want = default_plan(args)
    hosts = [p for p in plans(args) for c in p.checkpoints if c.kind == "default"]
    assert len(hosts) == 1, "exactly one run carries the default's row"
    [host] = hosts
    [checkpoint] = host.checkpoints
    # The same campaign, only run for longer: every setting a round depends on is the default's.
    assert (host.steps, host.train, host.aggregation, host.wire) == (
        want.steps,
        want.train,
        want.aggregation,
        want.wire,
    )
    assert checkpoint.rounds == want.rounds < host.rounds
    assert checkpoint.label == want.label


def test_no_plan_is_the_default_on_its_own_and_every_kind_has_a_place_in_the_table():
    args = quality_parser().parse_args([])
    assert all(p.kind != "default" for p in plans(args))
    assert {p.kind for p in plans(args)} | {c.kind for p in plans(args) for c in p.checkpoints} <= set(KINDS)
