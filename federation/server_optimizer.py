"""The server's own step after the merge: Flower's FedAvgM, FedAdam or FedYogi rule, as post-processing.

Whatever the campaign's strategy merged (FedAvg, FedMedian, FedTrimmedAvg, MultiKrum, or FedAvg's noised mean
inside Flower's DP wrapper) is treated as the round's proposed global: the server then moves from the round's
global towards it by its own rule, with state that carries over from round to round (server momentum; Adam's
and Yogi's moments). Post-processing, not another strategy: Flower's DP wrapper refuses an inner strategy that
overrides FedAvg.aggregate_train (FACTS.md, "Server optimizers"), and a function of the noised mean alone keeps
the DP guarantee and Flower's accountant as they are.

The step is Flower's own code, not a copy of its formulas: `ServerOptimizer` holds one FedAvgM / FedAdam /
FedYogi instance, sets its `current_arrays` to the round's global and hands it one synthetic reply carrying the
merge (a weighted mean of one reply is that reply), then reads the result and casts it back to the global's dtype
(FedAdam returns float64 under NumPy 2; no adapter may grow on the wire).

That leans on Flower internals: `current_arrays`, FedAvgM's `momentum_vector` (a list in the arrays' order),
FedOpt's `m_t` and `v_t` (dicts by name), and FedAdam's use of `server_round` in its step size. They are not
API, so this module is pinned to flwr 1.42 (FLOWER_VERSION) and checks Flower's rule against a hand computation
on tiny arrays every time an optimizer is built (`self_test`): a Flower upgrade that changed any of it fails the
ServerApp at start-up, naming the version, instead of training with a silently different rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from federation.config import AggregationConfig

FLOWER_VERSION = "1.42.0"  # the Flower whose internals this module relies on (see the module docstring)
FLOWER_LOGGER_NAME = "flwr"
_WEIGHT_KEY = "weight"
_STATE_FORMAT = "bayanihan-server-optimizer-1"


class FlowerRuleChanged(RuntimeError):
    """Flower's optimizer no longer computes what this module was written against."""


@contextmanager
def _quiet_flower() -> Iterator[None]:
    logger = logging.getLogger(FLOWER_LOGGER_NAME)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _synthetic_reply(arrays: ArrayRecord) -> Message:
    """The merge as the one reply of a round: built from explicit metadata, so no running Flower task is needed."""
    metadata = Metadata(
        run_id=0,
        message_id="server-optimizer",
        src_node_id=0,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type="train",
    )
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({_WEIGHT_KEY: 1.0})})
    return Message(content=content, metadata=metadata)


class ServerOptimizer:
    """One of Flower's server optimizers, used for its update rule only.

    `name` is one of config.SERVER_OPTIMIZERS: "sgd" (FedAvgM: `lr` is server_learning_rate, `momentum` its
    server_momentum), "adam" (FedAdam) or "yogi" (FedYogi), whose `lr` is eta and `beta1`, `beta2`, `tau` theirs.
    `steps` counts the steps applied so far; it is FedAdam's round number (its step size depends on it) and part
    of the state a resumed campaign restores, so the schedule continues where it stopped.
    """

    def __init__(
        self,
        name: str = "sgd",
        *,
        lr: float = 1.0,
        momentum: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        check: bool = True,
    ) -> None:
        self.name, self.lr, self.momentum = name, lr, momentum
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.steps = 0
        self.flower = self._flower()
        if check:
            self_test()

    @classmethod
    def from_config(cls, cfg: AggregationConfig) -> ServerOptimizer | None:
        """The campaign's optimizer, or None when it would change nothing (sgd, learning rate 1, no momentum)."""
        if not cfg.server_step:
            return None
        return cls(
            cfg.server_optimizer,
            lr=cfg.server_lr,
            momentum=cfg.server_momentum if cfg.server_optimizer == "sgd" else 0.0,  # adam/yogi: server-beta1
            beta1=cfg.server_beta1,
            beta2=cfg.server_beta2,
            tau=cfg.server_tau,
        )

    def _flower(self) -> FedAvgM | FedAdam | FedYogi:
        common: dict[str, Any] = {"weighted_by_key": _WEIGHT_KEY, "min_train_nodes": 1, "min_available_nodes": 1}
        if self.name == "sgd":
            return FedAvgM(**common, server_learning_rate=self.lr, server_momentum=self.momentum)
        opt = {"eta": self.lr, "beta_1": self.beta1, "beta_2": self.beta2, "tau": self.tau}
        if self.name == "adam":
            return FedAdam(**common, **opt)
        if self.name == "yogi":
            return FedYogi(**common, **opt)
        raise ValueError(f"unknown server optimizer {self.name!r}")

    def step(self, global_arrays: ArrayRecord, merged: ArrayRecord) -> ArrayRecord:
        """The round's new global: one step of Flower's rule from `global_arrays` towards `merged`.

        The result has the global's names, order, shapes and dtypes (float32 in, float32 out).
        """
        reference = {k: a.numpy() for k, a in global_arrays.items()}
        ordered = ArrayRecord({k: Array(np.asarray(merged[k].numpy())) for k in reference})
        if isinstance(self.flower, FedAvgM):
            self.flower.current_arrays = ArrayRecord({k: Array(v.copy()) for k, v in reference.items()})
        else:
            self.flower.current_arrays = {k: v.copy() for k, v in reference.items()}
        self.steps += 1
        with _quiet_flower():  # its "Received 1 results" would read like a round of one node in the log
            result, _ = self.flower.aggregate_train(self.steps, [_synthetic_reply(ordered)])
        if result is None:
            raise FlowerRuleChanged(f"Flower {flwr.__version__}'s {type(self.flower).__name__} merged nothing")
        out = {k: result[k].numpy() for k in reference}
        return ArrayRecord({k: Array(np.ascontiguousarray(out[k], dtype=v.dtype)) for k, v in reference.items()})

    # --- state: what a resumed campaign needs to continue exactly -------------------------------------------

    def state(self, keys: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Copies of the optimizer's state (tensors by name, and metadata), safe to keep while training goes on.

        FedAvgM keeps its momentum as a list in the arrays' order; `keys` (the global's names, in order) names it.
        Empty tensors when there is no state yet (before the first step, or plain sgd without momentum).
        """
        tensors: dict[str, np.ndarray] = {}
        flower = self.flower
        if isinstance(flower, FedAvgM):
            if flower.momentum_vector is not None:
                if keys is None or len(keys) != len(flower.momentum_vector):
                    raise ValueError("FedAvgM's momentum is a list: its tensor names are needed to save it")
                tensors = {f"momentum/{k}": np.array(v) for k, v in zip(keys, flower.momentum_vector, strict=True)}
        else:
            for part in ("m_t", "v_t"):
                for k, v in (getattr(flower, part) or {}).items():
                    tensors[f"{part}/{k}"] = np.array(v)
        metadata = {"format": _STATE_FORMAT, "optimizer": self.name, "steps": str(self.steps), "flwr": flwr.__version__}
        return tensors, metadata

    def load_state(self, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], keys: list[str]) -> None:
        """Restore what `state` returned (from this campaign's earlier run); `keys`: the global's names, in order."""
        if metadata.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a server optimizer state ({metadata.get('format')!r})")
        if metadata.get("optimizer") != self.name:
            raise ValueError(
                f"the saved state is {metadata.get('optimizer')!r}'s, this campaign's optimizer is {self.name!r}"
            )
        parts: dict[str, dict[str, np.ndarray]] = {}
        for name, value in tensors.items():
            part, _, key = name.partition("/")
            parts.setdefault(part, {})[key] = np.array(value)
        unknown = set(parts) - ({"momentum"} if self.name == "sgd" else {"m_t", "v_t"})
        if unknown:
            raise ValueError(f"the saved state holds {', '.join(sorted(unknown))}, which {self.name} does not keep")
        for part, values in parts.items():
            if set(values) != set(keys):
                differ = len(set(values) ^ set(keys))
                raise ValueError(f"the saved {part} does not fit this campaign's adapter ({differ} tensors differ)")
        flower = self.flower
        if isinstance(flower, FedAvgM):
            flower.momentum_vector = [parts["momentum"][k] for k in keys] if "momentum" in parts else None
        else:
            flower.m_t = {k: parts["m_t"][k] for k in keys} if "m_t" in parts else None
            flower.v_t = {k: parts["v_t"][k] for k in keys} if "v_t" in parts else None
        self.steps = int(metadata.get("steps", "0"))

    def save(self, path: Path | str, keys: list[str]) -> bool:
        """Write the state to a safetensors file; False (nothing written) when there is no state to keep."""
        return save_state(path, *self.state(keys))

    def load(self, path: Path | str, keys: list[str]) -> None:
        """Restore the state a file `save`/`save_state` wrote (bit for bit: safetensors keeps every dtype)."""
        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
        self.load_state(load_file(str(path)), metadata, keys)


def save_state(path: Path | str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> bool:
    """Write a state `ServerOptimizer.state` returned (the ServerApp copies it at aggregation time and writes it
    on the evaluator's thread); False, and nothing written, when it holds no tensors."""
    if not tensors:
        return False
    save_file(dict(tensors), str(path), metadata=dict(metadata))
    return True


# --- the start-up check: Flower's rule against a hand computation ----------------------------------------------


def _hand(name: str, lr: float, momentum: float, beta1: float, beta2: float, tau: float,
          globals_: list[np.ndarray], merges: list[np.ndarray]) -> list[np.ndarray]:  # fmt: skip
    """Flower 1.42's rules written out (float64), one step per (global, merge) pair; the new global after each."""
    out, mom, m, v = [], None, None, None
    for t, (x, y) in enumerate(zip(globals_, merges, strict=True), start=1):
        x, y = x.astype(np.float64), y.astype(np.float64)
        if name == "sgd":
            g = x - y  # FedAvgM's pseudo-gradient: old - new
            if momentum > 0:
                mom = g if mom is None else momentum * mom + g
                g = mom
            out.append(x - lr * g)
            continue
        d = y - x
        m = (1 - beta1) * d if m is None else beta1 * m + (1 - beta1) * d
        if name == "adam":
            v = (1 - beta2) * d**2 if v is None else beta2 * v + (1 - beta2) * d**2
            eta = lr * np.sqrt(1 - beta2 ** (t + 1.0)) / (1 - beta1 ** (t + 1.0))
        else:
            v = np.zeros_like(d) if v is None else v
            v = v - (1 - beta2) * d**2 * np.sign(v - d**2)
            eta = lr
        out.append(x + eta * m / (np.sqrt(v) + tau))
    return out


def self_test() -> None:
    """Flower's FedAvgM, FedAdam and FedYogi, two steps each on tiny arrays, against `_hand`.

    Cheap (microseconds of arithmetic). Raises FlowerRuleChanged naming the installed flwr when a rule, or an
    internal this module sets or reads, is not what flwr 1.42 had.
    """
    globals_ = [np.array([0.5, -1.0, 2.0], np.float32), np.array([0.25, -0.5, 1.0], np.float32)]
    merges = [np.array([1.0, -2.0, 2.0], np.float32), np.array([0.0, 0.5, 1.5], np.float32)]
    for name, momentum in (("sgd", 0.5), ("adam", 0.0), ("yogi", 0.0)):
        try:
            opt = ServerOptimizer(name, lr=0.5, momentum=momentum, beta1=0.9, beta2=0.99, tau=1e-3, check=False)
            got = []
            for x, y in zip(globals_, merges, strict=True):
                got.append(opt.step(ArrayRecord({"w": Array(x)}), ArrayRecord({"w": Array(y)}))["w"].numpy())
            state, _ = opt.state(["w"])
        except Exception as exc:  # any internal that moved: attribute, signature, record type
            raise FlowerRuleChanged(_changed(name, f"{type(exc).__name__}: {exc}")) from exc
        want = _hand(name, 0.5, momentum, 0.9, 0.99, 1e-3, globals_, merges)
        if not all(np.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want, strict=True)) or not state:
            raise FlowerRuleChanged(_changed(name, f"got {got}, expected {want}"))


def _changed(name: str, detail: str) -> str:
    cls = {"sgd": "FedAvgM", "adam": "FedAdam", "yogi": "FedYogi"}[name]
    return (
        f"flwr {flwr.__version__}'s {cls} no longer matches the rule federation.server_optimizer was written against "
        f"(flwr {FLOWER_VERSION}): {detail}. Check the server optimizer against this Flower before using it."
    )
