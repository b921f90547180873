"""Central differential privacy with Flower's own wrapper and accountant (needs `flwr[dp]`: dp-accounting).

Server-side fixed clipping: every update (reply - global) is clipped to `dp-clipping-norm`, the clipped
replies are averaged with equal weights, and Gaussian noise of std `noise * clip / n` is added to the mean.
Flower's RDP accountant composes one Gaussian release per round; epsilon is reported at `dp-delta`.
"""

from __future__ import annotations

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    PrivacySpent,
    RdpAccountant,
    SamplingMethod,
)
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from federation.config import AggregationConfig


def dp_wrap(inner: Strategy, cfg: AggregationConfig, num_nodes: int) -> DifferentialPrivacyServerSideFixedClipping:
    """`num_nodes` are sampled each round, and every one of them must reply, or the round is not released.

    No amplification by sampling is claimed: every node takes part in every round, so the accountant
    gets no credit for subsampling (the conservative choice, and the one Flower accounts for fixed clipping).
    """
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=cfg.dp_delta,
            population_size=num_nodes,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return DifferentialPrivacyServerSideFixedClipping(
        inner,
        noise_multiplier=cfg.dp_noise_multiplier,
        clipping_norm=cfg.dp_clipping_norm,
        num_sampled_clients=num_nodes,
        accountant=accountant,
    )


def spent(strategy: Strategy) -> PrivacySpent | None:
    """Cumulative privacy spent so far, or None when the strategy adds no accounted DP."""
    privacy_spent = getattr(strategy, "privacy_spent", None)
    return privacy_spent() if callable(privacy_spent) else None


def replay(strategy: Strategy, rounds: int) -> None:
    """Restore the accountant of a resumed campaign: compose the releases of its `rounds` earlier rounds.

    Each merged round released exactly one noised mean of `num_sampled_clients` clipped updates (a refused reply
    is replaced by a zero update, never dropped), so the earlier run's ledger is `rounds` identical Gaussian
    events; composing them again gives the same cumulative epsilon the earlier run reported.
    """
    accountant = getattr(strategy, "accountant", None)
    if accountant is None or rounds <= 0:
        return
    event = GaussianPrivacyEvent(
        noise_multiplier=strategy.noise_multiplier,
        sample_size=strategy.num_sampled_clients,
        population_size=accountant.config.population_size,
    )
    accountant.compose(event, count=rounds)
