"""response_time: the lowest expected wait, latency EWMA x (in flight + 1). O(n) pick.

The latency is the backend's EWMA of time to the response head, decayed towards zero while no
new sample arrives (half-life 5 s), so a backend that was slow is tried again and, once it is
fast, wins its traffic back. Multiplying by in-flight + 1 keeps traffic from herding onto the
fastest backend: its queue grows and its score with it. A backend with no sample yet scores 0
and is tried first. Ties at random.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend

HALF_LIFE = 5.0


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
            score = decayed_latency(backend, now) * (backend.in_flight + 1)
            if not best or score < best_score:
                best, best_score = [backend], score
            elif score == best_score:
                best.append(backend)
        return best[0] if len(best) == 1 else self._rng.choice(best)
