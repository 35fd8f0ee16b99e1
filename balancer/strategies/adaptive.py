"""adaptive: the lowest weighted score of load, latency, CPU and memory (SPEC §2). O(n) pick.

    score = w_conn * min(1, in_flight / capacity) + w_rt * latency / max(latency)
          + w_cpu * cpu + w_mem * memory              (weights normalised by their sum)

Each term is on a 0..1 scale where 0 is idle. The connections term is the requests in flight
over the backend's capacity: its `max_connections` when it has one, else `adaptive.capacity`,
at most 1 (a backend at or past its capacity is as loaded as it gets). The latency is
response_time's (the EWMA, floored by the age of the oldest request waiting for its head,
decayed only while none waits), divided by the largest among the candidates, so a small
absolute gap stays small. CPU and memory are what the backend reported (health-check body or
an X-Backend-Load header), 0.5 when absent or older than LOAD_FRESH_SECONDS. Ties at random.

Why not in-flight over the largest in flight among the candidates, as before: that scale has
no unit, so one request in flight to a fast backend against none to an idle slow one was the
whole 0.4 of the term, and with the SPEC's default weights the idle slow backend won about
every other quiet moment (1.4 % of requests, and the p99 with them: benchmarks/strategies.py).
Over a capacity, a few requests in flight weigh a few hundredths, and the latency decides.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from balancer.strategies.response_time import latency

if TYPE_CHECKING:
    from balancer.backend import Backend
    from balancer.config import AdaptiveConfig

NEUTRAL = 0.5
LOAD_FRESH_SECONDS = 30.0


class Adaptive:
    def __init__(
        self,
        config: AdaptiveConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        weights = config.weights
        total = weights.connections + weights.response_time + weights.cpu + weights.memory
        self._w = (
            weights.connections / total,
            weights.response_time / total,
            weights.cpu / total,
            weights.memory / total,
        )
        self.capacity = config.capacity
        self._rng = rng or random.Random()
        self._clock = clock

    def connections(self, backend: Backend) -> float:
        """In flight over the backend's capacity (max_connections, else adaptive.capacity),
        at most 1."""
        capacity = backend.config.max_connections or self.capacity
        load = backend.in_flight / capacity
        return load if load < 1.0 else 1.0

    def score(self, backend: Backend, latency_now: float, max_latency: float, now: float) -> float:
        w_conn, w_rt, w_cpu, w_mem = self._w
        fresh = now - backend.load_updated_at <= LOAD_FRESH_SECONDS
        cpu = backend.cpu if fresh and backend.cpu is not None else NEUTRAL
        memory = backend.memory if fresh and backend.memory is not None else NEUTRAL
        rt = latency_now / max_latency if max_latency else 0.0
        return w_conn * self.connections(backend) + w_rt * rt + w_cpu * cpu + w_mem * memory

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        now = self._clock()
        latencies = [latency(b, now) for b in candidates]
        max_latency = max(latencies)
        best: list[Backend] = []
        best_score = 0.0
        for backend, latency_now in zip(candidates, latencies, strict=True):
            score = self.score(backend, latency_now, max_latency, now)
            if not best or score < best_score:
                best, best_score = [backend], score
            elif score == best_score:
                best.append(backend)
        return best[0] if len(best) == 1 else self._rng.choice(best)
