"""The set of backends and the snapshot of those a strategy may pick.

The candidates tuple is rebuilt when a backend's state changes, never per request
(ARCHITECTURE habit 3: pick from an immutable snapshot).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection

from balancer.backend import Backend, RequestStats
from balancer.strategies import Strategy


class Pool:
    def __init__(
        self,
        backends: tuple[Backend, ...],
        strategy: Strategy,
        *,
        slow_start: float = 0.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = backends
        self.strategy = strategy
        self.slow_start = slow_start
        self._rng = rng or random.Random()
        self._clock = clock
        self.candidates: tuple[Backend, ...] = ()
        # Requests answered without any backend (503 when none could be picked).
        self.unrouted = RequestStats()
        for backend in backends:
            backend.on_change(self.rebuild)
        self.rebuild()

    def __repr__(self) -> str:
        return f"<Pool [{len(self.candidates)} of {len(self.backends)} routable]>"

    def rebuild(self) -> None:
        self.candidates = tuple(b for b in self.backends if b.routable)

    def by_name(self, name: str) -> Backend | None:
        for backend in self.backends:
            if backend.name == name:
                return backend
        return None

    def pick(self, exclude: Collection[Backend] = ()) -> Backend | None:
        """A backend for a new request, or None when none is routable."""
        candidates = self.candidates
        if exclude:
            candidates = tuple(b for b in candidates if b not in exclude)
        if not candidates:
            return None
        backend = self.strategy.pick(candidates)
        if self.slow_start and len(candidates) > 1:
            # Slow start: a backend back for t seconds takes about t/slow_start of its share;
            # the rest of its turns go to the others (whatever the strategy).
            share = (self._clock() - backend.recovered_at) / self.slow_start
            if share < 1.0 and self._rng.random() >= share:
                return self.strategy.pick(tuple(b for b in candidates if b is not backend))
        return backend

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def close(self) -> None:
        for backend in self.backends:
            backend.upstream.close()
            if backend.breaker is not None:
                backend.breaker.close()
