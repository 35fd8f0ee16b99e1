"""Balancing strategies: each a small class behind the `Strategy` protocol, found by name.

A strategy only chooses among the candidates it is given (never empty: eligibility, sticky
sessions, slow start, the 503 and accounting live once in the pool and the proxy). It reads the
backends' live stats and never awaits. Randomness and time are injected so tests are exact.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from balancer.config import AdaptiveConfig
from balancer.strategies.adaptive import Adaptive
from balancer.strategies.consistent_hash import ConsistentHash
from balancer.strategies.least_connections import LeastConnections
from balancer.strategies.p2c import PowerOfTwo
from balancer.strategies.response_time import ResponseTime
from balancer.strategies.round_robin import RoundRobin
from balancer.strategies.weighted import Weighted

if TYPE_CHECKING:
    from balancer.backend import Backend


class Strategy(Protocol):
    """Picks one backend from the routable candidates: pure, never awaits.

    `key` is the request's hash key for strategies that set `needs_key` (consistent_hash).
    """

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend: ...


Rebuild = Callable[[Sequence["Backend"]], None]


def rebuild_hook(strategy: Strategy) -> Rebuild | None:
    """A strategy's optional `rebuild(backends)`, which the pool calls off the request path
    whenever its members or their weights may have changed (consistent_hash builds its ring)."""
    hook: Rebuild | None = getattr(strategy, "rebuild", None)
    return hook


Clock = Callable[[], float]
StrategyFactory = Callable[[random.Random, Clock, AdaptiveConfig], Strategy]

STRATEGIES: dict[str, StrategyFactory] = {
    "round_robin": lambda rng, clock, adaptive: RoundRobin(rng),
    "weighted": lambda rng, clock, adaptive: Weighted(rng),
    "least_connections": lambda rng, clock, adaptive: LeastConnections(rng),
    "response_time": lambda rng, clock, adaptive: ResponseTime(rng, clock),
    "adaptive": lambda rng, clock, adaptive: Adaptive(adaptive, rng, clock),
    "p2c": lambda rng, clock, adaptive: PowerOfTwo(rng, clock),
    "consistent_hash": lambda rng, clock, adaptive: ConsistentHash(rng),
}


class UnknownStrategy(ValueError):
    pass


def make_strategy(
    name: str,
    *,
    adaptive: AdaptiveConfig | None = None,
    rng: random.Random | None = None,
    clock: Clock = time.monotonic,
) -> Strategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(
            f"strategy {name!r} is not available in this version "
            f"(available: {', '.join(sorted(STRATEGIES))})"
        ) from None
    return factory(rng or random.Random(), clock, adaptive or AdaptiveConfig())


def needs_key(strategy: Strategy) -> bool:
    """Whether the strategy hashes a request key (the proxy then extracts it)."""
    return bool(getattr(strategy, "needs_key", False))
