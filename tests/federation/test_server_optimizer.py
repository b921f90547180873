"""The server's step after the merge: Flower's FedAvgM / FedAdam / FedYogi rules checked by hand, composed after
every inner strategy (DP included), and a resumed campaign's optimizer state continuing exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvgM, FedYogi
from flwr.supercore.task_identity import TaskIdentity

from federation import server_optimizer as so
from federation.config import AggregationConfig
from federation.server_optimizer import FlowerRuleChanged, ServerOptimizer
from federation.strategy import build_strategy, describe
from tests.federation.test_strategy import ZERO, NodesOnlyGrid, four_replies, honest, reply, start_round


@pytest.fixture(autouse=True)
def _identity():
    # Messages are stamped with the running task's identity; outside Flower we set one (as test_strategy does).
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = None


# Three rounds on two tiny tensors: the global each round started from, and what the inner strategy merged.
GLOBALS = [
    {"a": np.array([[0.5, -1.0]], np.float32), "b": np.array([2.0, 0.0, 1.0], np.float32)},
    {"a": np.array([[0.7, -1.5]], np.float32), "b": np.array([2.5, 0.25, 1.0], np.float32)},
    {"a": np.array([[1.0, -1.25]], np.float32), "b": np.array([2.0, 0.5, 0.75], np.float32)},
]
MERGES = [
    {"a": np.array([[1.0, -2.0]], np.float32), "b": np.array([2.0, 1.0, 0.5], np.float32)},
    {"a": np.array([[0.5, -1.0]], np.float32), "b": np.array([3.0, 0.0, 1.5], np.float32)},
    {"a": np.array([[1.5, -1.0]], np.float32), "b": np.array([1.0, 0.5, 0.25], np.float32)},
]


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v.copy()) for k, v in arrays.items()})


def steps(opt: ServerOptimizer, rounds: range = range(3)) -> list[dict[str, np.ndarray]]:
    out = []
    for t in rounds:
        new = opt.step(record(GLOBALS[t]), record(MERGES[t]))
        out.append({k: a.numpy() for k, a in new.items()})
    return out


def d64(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float64) for k, v in arrays.items()}


def assert_close(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> None:
    for g, w in zip(got, want, strict=True):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-6)


def test_server_sgd_with_momentum_follows_fedavgm_by_hand():
    lr, mu = 0.8, 0.9
    want, momentum = [], None
    for x, y in zip(map(d64, GLOBALS), map(d64, MERGES), strict=True):
        grad = {k: x[k] - y[k] for k in x}  # the pseudo-gradient: old global - merge
        momentum = grad if momentum is None else {k: mu * momentum[k] + grad[k] for k in x}
        want.append({k: x[k] - lr * momentum[k] for k in x})
    assert_close(steps(ServerOptimizer("sgd", lr=lr, momentum=mu)), want)


def test_server_sgd_without_momentum_scales_the_merge_step():
    want = [
        {k: x[k] - 3.0 * (x[k] - y[k]) for k in x} for x, y in zip(map(d64, GLOBALS), map(d64, MERGES), strict=True)
    ]
    assert_close(steps(ServerOptimizer("sgd", lr=3.0)), want)


def test_server_adam_follows_fedadam_by_hand():
    # Flower 1.42's FedAdam: moments without their own bias correction, a step size eta * sqrt(1 - b2^(t+1)) /
    # (1 - b1^(t+1)) with t the round (here: the server's step count, from 1).
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    want, m, v = [], None, None
    for t, (x, y) in enumerate(zip(map(d64, GLOBALS), map(d64, MERGES), strict=True), start=1):
        d = {k: y[k] - x[k] for k in x}
        m = {k: (b1 * (m[k] if m else 0.0)) + (1 - b1) * d[k] for k in x}
        v = {k: (b2 * (v[k] if v else 0.0)) + (1 - b2) * d[k] ** 2 for k in x}
        step = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        want.append({k: x[k] + step * m[k] / (np.sqrt(v[k]) + tau) for k in x})
    assert_close(steps(ServerOptimizer("adam", lr=eta, beta1=b1, beta2=b2, tau=tau)), want)


def test_server_yogi_follows_fedyogi_by_hand():
    eta, b1, b2, tau = 0.05, 0.8, 0.95, 1e-2
    want, m, v = [], None, None
    for x, y in zip(map(d64, GLOBALS), map(d64, MERGES), strict=True):
        d = {k: y[k] - x[k] for k in x}
        m = {k: (b1 * (m[k] if m else 0.0)) + (1 - b1) * d[k] for k in x}
        v = {k: (v[k] if v else 0.0) - (1 - b2) * d[k] ** 2 * np.sign((v[k] if v else 0.0) - d[k] ** 2) for k in x}
        want.append({k: x[k] + eta * m[k] / (np.sqrt(v[k]) + tau) for k in x})
    assert_close(steps(ServerOptimizer("yogi", lr=eta, beta1=b1, beta2=b2, tau=tau)), want)


@pytest.mark.parametrize("name", ["sgd", "adam", "yogi"])
def test_every_optimizer_returns_float32_with_the_globals_names_and_shapes(name):
    opt = ServerOptimizer(name, lr=0.5, momentum=0.5 if name == "sgd" else 0.0)
    for t in range(3):
        new = opt.step(record(GLOBALS[t]), record(MERGES[t]))
        assert list(new.keys()) == list(GLOBALS[t])
        assert all(new[k].numpy().dtype == np.float32 and new[k].shape == GLOBALS[t][k].shape for k in new)


def test_plain_sgd_is_no_optimizer_and_leaves_the_merge_bitwise_unchanged():
    plain = AggregationConfig(server_momentum=0.0)
    assert ServerOptimizer.from_config(plain) is None
    assert build_strategy(plain, min_nodes=2).optimizer is None
    # Even if built, Flower's FedAvgM with learning rate 1 and no momentum hands the merge back as it is.
    new = ServerOptimizer("sgd").step(record(GLOBALS[0]), record(MERGES[0]))
    assert all(np.array_equal(new[k].numpy(), MERGES[0][k]) for k in MERGES[0])


@pytest.mark.parametrize(
    ("cfg", "flower"),
    [
        (AggregationConfig(server_lr=2.0), "FedAvgM"),
        (AggregationConfig(server_momentum=0.9), "FedAvgM"),
        (AggregationConfig(server_optimizer="adam", server_lr=0.01), "FedAdam"),
        (AggregationConfig(server_optimizer="yogi"), "FedYogi"),
    ],
)
def test_the_campaigns_optimizer_is_flowers_own_class(cfg, flower):
    opt = build_strategy(cfg, min_nodes=2).optimizer
    assert opt is not None and type(opt.flower).__name__ == flower


# --- composed after the inner strategy ------------------------------------------------------------------------


def torch_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The global as the ServerApp holds it: torch tensors (get_adapter_state)."""
    return ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian"])
def test_the_server_step_applies_to_what_the_inner_strategy_merged(strategy):
    """Two rounds with server momentum: each round Flower's merge of the replies (weighted mean or coordinate-wise
    median, by hand here), then FedAvgM's step from the round's global towards it."""
    cfg = AggregationConfig(strategy=strategy, server_lr=1.5, server_momentum=0.5, max_norm_ratio=0)
    guarded = build_strategy(cfg, min_nodes=3)
    current = {k: np.full_like(v, 0.05) for k, v in ZERO.items()}
    want, momentum = d64(current), None
    for server_round in (1, 2):
        nodes = {i: honest(10 * server_round + i) for i in (1, 2, 3)}
        list(guarded.configure_train(server_round, torch_record(current), ConfigRecord({}), NodesOnlyGrid(3)))
        arrays, _ = guarded.aggregate_train(server_round, [reply(i, a, samples=i) for i, a in nodes.items()])
        stacked = {k: np.stack([d64(a)[k] for a in nodes.values()]) for k in ZERO}
        if strategy == "fedavg":
            merge = {k: np.tensordot([1 / 6, 2 / 6, 3 / 6], v, axes=1) for k, v in stacked.items()}
        else:
            merge = {k: np.median(v, axis=0) for k, v in stacked.items()}
        grad = {k: want[k] - merge[k] for k in ZERO}
        momentum = grad if momentum is None else {k: 0.5 * momentum[k] + grad[k] for k in ZERO}
        want = {k: want[k] - 1.5 * momentum[k] for k in ZERO}
        current = {k: a.numpy() for k, a in arrays.items()}
        assert all(current[k].dtype == np.float32 for k in current)
        for k in ZERO:
            np.testing.assert_allclose(current[k], want[k], rtol=1e-5, atol=1e-6)
        # data_value measures the update actually applied, which no longer is the plain merge's.
        assert all(r.data_value is not None for r in guarded.rounds[server_round].replies)


def test_under_dp_the_server_step_post_processes_the_noised_mean_and_the_accountant_still_runs():
    """The same noise (seeded) with and without the optimizer: the guarded result is the optimizer's step from the
    global to the noised mean, and epsilon is accounted and reported as without it."""
    base = {"dp_noise_multiplier": 1.0, "dp_clipping_norm": 0.5, "dp_delta": 1e-5}
    plain = build_strategy(AggregationConfig(**base), min_nodes=4)
    cfg = AggregationConfig(**base, server_optimizer="adam", server_lr=0.05)
    guarded = build_strategy(cfg, min_nodes=4)
    assert type(guarded.inner).__name__ == "DifferentialPrivacyServerSideFixedClipping"
    start = {k: np.full_like(v, 0.05) for k, v in ZERO.items()}
    results = {}
    for name, strategy in (("plain", plain), ("guarded", guarded)):
        start_round(strategy, start, 4)
        np.random.seed(1234)  # Flower's DP noise comes from NumPy's global generator
        results[name], _ = strategy.aggregate_train(1, four_replies(None))
    noised = {k: a.numpy() for k, a in results["plain"].items()}
    expected = ServerOptimizer("adam", lr=0.05).step(record(start), record(noised))
    for k in start:
        assert results["guarded"][k].numpy().dtype == np.float32
        np.testing.assert_array_equal(results["guarded"][k].numpy(), expected[k].numpy())
    assert not np.allclose(noised["lora_A"], expected["lora_A"].numpy())  # the step did change the noised mean
    assert guarded.rounds[1].epsilon is not None and guarded.rounds[1].epsilon == pytest.approx(plain.rounds[1].epsilon)


def test_describe_names_the_server_optimizer_and_its_numbers():
    plain = describe(AggregationConfig(server_momentum=0.0))
    assert "then server" not in plain["method"] and plain["server_optimizer"].startswith("none")
    sgd = describe(AggregationConfig(server_lr=3.0, server_momentum=0.9))
    assert ", then server SGD with learning rate 3 and momentum 0.9 (Flower FedAvgM's rule); " in sgd["method"]
    assert sgd["server_optimizer"] == "server SGD with learning rate 3 and momentum 0.9 (Flower FedAvgM's rule)"
    adam = describe(AggregationConfig(server_optimizer="adam", server_lr=0.01, server_tau=1e-4))
    assert "then server Adam (Flower FedAdam's rule; eta 0.01, beta1 0.9, beta2 0.99, tau 0.0001)" in adam["method"]
    dp = describe(AggregationConfig(dp_noise_multiplier=1.0, server_optimizer="yogi"))
    assert "differential privacy" in dp["method"] and "then server Yogi (Flower FedYogi's rule" in dp["method"]


# --- resume: the state survives a file round trip exactly ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs", [{"name": "sgd", "lr": 0.7, "momentum": 0.9}, {"name": "adam", "lr": 0.1}, {"name": "yogi", "lr": 0.1}]
)
def test_a_resumed_optimizer_continues_exactly_as_an_uninterrupted_one(kwargs, tmp_path):
    whole = steps(ServerOptimizer(**kwargs))
    first = ServerOptimizer(**kwargs)
    steps(first, range(2))
    path = tmp_path / "server_optimizer.safetensors"
    assert first.save(path, list(GLOBALS[0]))
    resumed = ServerOptimizer(**kwargs)
    resumed.load(path, list(GLOBALS[0]))
    assert resumed.steps == 2
    third = steps(resumed, range(2, 3))[0]
    assert all(np.array_equal(third[k], whole[2][k]) for k in third)


def test_the_saved_state_is_a_copy_that_later_steps_do_not_change():
    opt = ServerOptimizer("adam", lr=0.1)
    steps(opt, range(1))
    tensors, metadata = opt.state(list(GLOBALS[0]))
    kept = {k: v.copy() for k, v in tensors.items()}
    steps(opt, range(1, 3))
    assert metadata["steps"] == "1" and all(np.array_equal(tensors[k], kept[k]) for k in kept)


def test_an_optimizer_without_state_writes_no_file(tmp_path):
    path = tmp_path / "state.safetensors"
    opt = ServerOptimizer("sgd", lr=2.0)
    steps(opt)
    assert not opt.save(path, list(GLOBALS[0])) and not path.exists()


def test_a_state_of_another_optimizer_or_adapter_is_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    adam = ServerOptimizer("adam")
    steps(adam, range(1))
    adam.save(path, list(GLOBALS[0]))
    with pytest.raises(ValueError, match="the saved state is 'adam'"):
        ServerOptimizer("yogi").load(path, list(GLOBALS[0]))
    with pytest.raises(ValueError, match="does not fit this campaign's adapter"):
        ServerOptimizer("adam").load(path, ["a", "c"])


# --- pinned to Flower's internals: the start-up check ------------------------------------------------------------


def test_the_start_up_check_passes_on_the_pinned_flower():
    import flwr

    assert flwr.__version__ == so.FLOWER_VERSION
    so.self_test()


def test_a_changed_flower_rule_fails_the_start_up_check_naming_the_version(monkeypatch):
    # As if a Flower upgrade dropped Yogi's sign rule for Adam's second moment.
    def adam_like(self, server_round, replies):
        from flwr.serverapp.strategy import FedAdam

        return FedAdam.aggregate_train(self, server_round, replies)

    monkeypatch.setattr(FedYogi, "aggregate_train", adam_like)
    with pytest.raises(FlowerRuleChanged, match=r"flwr 1\.42\.0's FedYogi no longer matches"):
        ServerOptimizer("yogi")


def test_a_renamed_flower_internal_fails_the_start_up_check(monkeypatch):
    original = FedAvgM.__init__

    def without_momentum_vector(self, *args, **kwargs):
        original(self, *args, **kwargs)
        del self.momentum_vector

    monkeypatch.setattr(FedAvgM, "__init__", without_momentum_vector)
    with pytest.raises(FlowerRuleChanged, match="FedAvgM"):
        ServerOptimizer("sgd", lr=0.5, momentum=0.5)
