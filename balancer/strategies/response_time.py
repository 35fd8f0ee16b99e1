"""response_time: the lowest expected wait, latency x (1 + in flight / QUEUE_DEPTH). O(n).

The latency is what `latency` below says: the backend's EWMA of time to the response head,
raised to the age of its oldest request still waiting for its head, and decayed towards zero
(half-life 0.5 s) only while nothing waits on it at all.

- The floor: a backend that turns slow sends no new sample until its first slow answer comes
  back, which may be seconds; meanwhile the age of its oldest waiting request says it is at
  least that slow, so traffic moves away before any slow answer is in. (Linkerd's experiment,
  a backend turning from ~167 ms to 2 s, showed the cost of waiting for the samples:
  benchmarks/turning_slow.py.)
- The decay: a backend that was slow and gets no traffic is tried again about once a second
  and, once it is fast, wins its traffic back. It decays only with nothing waiting: before,
  the EWMA of a backend that had just turned slow halved every 0.5 s while its slow requests
  were out, so it looked fastest exactly when it was slowest. With a request waiting, the
  EWMA counts as it is (a probe sent to a once-slow backend keeps it from taking more until
  the probe's answer is in).

The in-flight factor keeps traffic from herding onto the fastest backend. It is not
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
    """The cost response_time and p2c compare: the latency, inflated by requests in flight."""
    return latency(backend, now) * (1.0 + backend.in_flight / QUEUE_DEPTH)


def latency(backend: Backend, now: float) -> float:
    """The latency strategies compare: with a request waiting for its head, the EWMA or that
    request's age, whichever is larger; with none, the EWMA halved for every HALF_LIFE
    seconds since its last sample."""
    waiting = backend.waiting
    if waiting:
        oldest = now - next(iter(waiting)).started  # insertion order: the first is the oldest
        ewma = backend.latency_ewma
        return oldest if oldest > ewma else ewma
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
