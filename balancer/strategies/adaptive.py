"""adaptive: the lowest weighted score of load, latency, CPU and memory (SPEC §2). O(n) pick.

    score = w_conn * in_flight / max(in_flight) + w_rt * latency / max(latency)
          + w_cpu * cpu + w_mem * memory              (weights normalised by their sum)

Each term is on a 0..1 scale where 0 is idle. In-flight and latency (the decayed EWMA of
response_time) are divided by the largest among the candidates, so a small absolute gap
stays small. CPU and memory are what the backend reported (health-check body or an
X-Backend-Load header), 0.5 when absent or older than LOAD_FRESH_SECONDS. Ties at random.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from balancer.strategies.response_time import latency

if TYPE_CHECKING:
    from balancer.backend import Backend
    from balancer.config import AdaptiveWeights

NEUTRAL = 0.5
LOAD_FRESH_SECONDS = 30.0


class Adaptive:
    def __init__(
        self,
        weights: AdaptiveWeights,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        total = weights.connections + weights.response_time + weights.cpu + weights.memory
        self._w = (
            weights.connections / total,
            weights.response_time / total,
            weights.cpu / total,
            weights.memory / total,
        )
        self._rng = rng or random.Random()
        self._clock = clock

    def score(self, backend: Backend, max_in_flight: int, max_latency: float, now: float) -> float:
        w_conn, w_rt, w_cpu, w_mem = self._w
        fresh = now - backend.load_updated_at <= LOAD_FRESH_SECONDS
        cpu = backend.cpu if fresh and backend.cpu is not None else NEUTRAL
        memory = backend.memory if fresh and backend.memory is not None else NEUTRAL
        conn = backend.in_flight / max_in_flight if max_in_flight else 0.0
        rt = latency(backend, now) / max_latency if max_latency else 0.0
        return w_conn * conn + w_rt * rt + w_cpu * cpu + w_mem * memory

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        now = self._clock()
        max_in_flight = max(b.in_flight for b in candidates)
        max_latency = max(latency(b, now) for b in candidates)
        best: list[Backend] = []
        best_score = 0.0
        for backend in candidates:
            score = self.score(backend, max_in_flight, max_latency, now)
            if not best or score < best_score:
                best, best_score = [backend], score
            elif score == best_score:
                best.append(backend)
        return best[0] if len(best) == 1 else self._rng.choice(best)
