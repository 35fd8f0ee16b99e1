"""p2c: the power of two random choices (Envoy's least-request, Finagle's P2C). O(1) pick.

Two distinct candidates at random; the one with the lower expected wait wins (response_time's
cost: decayed latency EWMA inflated by requests in flight, so a once-slow backend gets sampled
again). Random pairs avoid the herding of always taking the global best, at two looks a pick.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from balancer.strategies.response_time import expected_wait

if TYPE_CHECKING:
    from balancer.backend import Backend


class PowerOfTwo:
    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        first, second = self._rng.sample(candidates, 2)
        now = self._clock()
        cost_first = expected_wait(first, now)
        cost_second = expected_wait(second, now)
        if cost_first == cost_second:  # e.g. both untried: the fewer in flight, else the first
            return first if first.in_flight <= second.in_flight else second
        return first if cost_first < cost_second else second
