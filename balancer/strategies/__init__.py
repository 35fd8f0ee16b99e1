"""Balancing strategies: each a small class behind the `Strategy` protocol, found by name."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from balancer.backend import Backend
from balancer.strategies.round_robin import RoundRobin


class Strategy(Protocol):
    """Picks one backend from the routable candidates: pure, never awaits.

    Eligibility, stickiness, the 503 and accounting live once in the caller; `candidates` is
    never empty.
    """

    def pick(self, candidates: Sequence[Backend]) -> Backend: ...


class StrategyFactory(Protocol):
    def __call__(self, rng: random.Random) -> Strategy: ...


STRATEGIES: dict[str, StrategyFactory] = {
    "round_robin": RoundRobin,
}


class UnknownStrategy(ValueError):
    pass


def make_strategy(name: str, rng: random.Random | None = None) -> Strategy:
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(
            f"strategy {name!r} is not available in this version "
            f"(available: {', '.join(sorted(STRATEGIES))})"
        ) from None
    return factory(rng or random.Random())
