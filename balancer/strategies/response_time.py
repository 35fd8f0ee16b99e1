"""response_time: the lowest expected wait, latency EWMA x (1 + in flight / QUEUE_DEPTH). O(n).

The latency is the backend's EWMA of time to the response head, decayed towards zero while no
new sample arrives (half-life 0.5 s), so a backend that was slow is tried again about once a
second (one request: ~0.1 % of the traffic) and, once it is fast, wins its traffic back. The
in-flight factor keeps traffic from herding onto the fastest backend. It is not
`in_flight + 1` (one queue per backend, as Finagle models it): app servers serve requests
concurrently, and with that model an idle slow backend beats a busy fast
one, so the slow one keeps taking ~2 % of requests and every p99 lands on it (measured with
benchmarks/strategies.py). Here QUEUE_DEPTH requests in flight count as doubling the wait. A
backend with no sample yet scores 0 and is tried first. Ties at random.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend

HALF_LIFE = 0.5
QUEUE_DEPTH = 8


def expected_wait(backend: Backend, now: float) -> float:
    """The cost response_time and p2c compare: decayed latency, inflated by requests in flight."""
    return decayed_latency(backend, now) * (1.0 + backend.in_flight / QUEUE_DEPTH)


def decayed_latency(backend: Backend, now: float) -> float:
    """The latency EWMA, halved for every HALF_LIFE seconds without a new sample."""
    age = now - backend.latency_updated_at
    if age <= HALF_LIFE / 10:
        return backend.latency_ewma
    return float(backend.latency_ewma * 0.5 ** (age / HALF_LIFE))


class ResponseTime:
    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        now = self._clock()
        best: list[Backend] = []
        best_score = 0.0
        for backend in candidates:
            score = expected_wait(backend, now)
            if not best or score < best_score:
                best, best_score = [backend], score
            elif score == best_score:
                best.append(backend)
        return best[0] if len(best) == 1 else self._rng.choice(best)
