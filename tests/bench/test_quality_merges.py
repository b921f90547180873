"""bench-quality-merges' merge rules against hand computations on tiny arrays (the bench's numbers rest on them)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality_merges import fedavg, fedexp, ties


def _one(values: list[float]) -> dict[str, np.ndarray]:
    return {"w": np.asarray(values, dtype=np.float32)}


START = _one([0.0, 1.0, 2.0, 3.0])
# Updates (reply - start): coordinate 0 all agree; 1: two up, one down; 2: nobody moved; 3: one up, two down.
REPLIES = [_one([1.0, 2.0, 2.0, 4.0]), _one([3.0, 3.0, 2.0, 2.0]), _one([2.0, 0.0, 2.0, 2.5])]


def test_fedavg_is_the_weighted_mean_of_the_replies():
    got = fedavg(START, REPLIES, [1.0, 1.0, 2.0])["w"]
    # (1 + 3 + 2*2) / 4, (2 + 3 + 0) / 4, 2, (4 + 2 + 2*2.5) / 4
    np.testing.assert_allclose(got, [2.0, 1.25, 2.0, 2.75])


def test_ties_averages_only_the_nodes_that_agree_with_the_elected_sign():
    got = ties(START, REPLIES, [1.0, 1.0, 2.0])["w"]
    # updates: [1, 3, 2], [1, 2, -1], [0, 0, 0], [1, -1, -0.5]; weighted sums 8, 1, 0, -1 elect +, +, none, -.
    # coordinate 0: all agree, (1 + 3 + 2*2) / 4 = 2; coordinate 1: nodes 1 and 2, (1 + 2) / 2 = 1.5;
    # coordinate 2: nobody moved, stays; coordinate 3: nodes 2 and 3, (-1 + 2*-0.5) / 3 = -2/3.
    np.testing.assert_allclose(got, [0.0 + 2.0, 1.0 + 1.5, 2.0, 3.0 - 2.0 / 3.0], rtol=1e-6)


def test_ties_equals_fedavg_when_every_node_moves_every_coordinate_the_same_way():
    replies = [_one([1.0, 2.0, 3.0, 4.0]), _one([2.0, 4.0, 2.5, 5.0])]
    np.testing.assert_allclose(ties(START, replies, [1.0, 3.0])["w"], fedavg(START, replies, [1.0, 3.0])["w"])


@pytest.mark.parametrize(
    ("replies", "eta"),
    [
        # Opposite updates of norm 1: mean squared norm 1, mean update 0 -> no step at all (nothing to scale).
        ([_one([1.0, 1.0, 2.0, 3.0]), _one([-1.0, 1.0, 2.0, 3.0])], None),
        # Orthogonal updates of norm 1: mean squared norm 1, mean (0.5, 0.5) of squared norm 0.5 -> eta 1 / 1 = 1.
        ([_one([1.0, 1.0, 2.0, 3.0]), _one([0.0, 2.0, 2.0, 3.0])], 1.0),
        # Three orthogonal updates of norm 3: mean squared norm 9, mean of squared norm 3 -> eta 9 / 6 = 1.5.
        ([_one([3.0, 1.0, 2.0, 3.0]), _one([0.0, 4.0, 2.0, 3.0]), _one([0.0, 1.0, 5.0, 3.0])], 1.5),
        # Identical updates: the mean is each of them, eta = max(1, 1/2) = 1.
        ([_one([1.0, 2.0, 3.0, 4.0]), _one([1.0, 2.0, 3.0, 4.0])], 1.0),
    ],
)
def test_fedexp_scales_the_mean_update_by_the_nodes_disagreement(replies, eta):
    weights = [1.0] * len(replies)
    mean = fedavg(START, replies, weights)["w"]
    got = fedexp(START, replies, weights)["w"]
    if eta is None:
        np.testing.assert_allclose(got, START["w"])
    else:
        np.testing.assert_allclose(got, START["w"] + eta * (mean - START["w"]), rtol=1e-6)
