"""The set of backends and the snapshot of those a strategy may pick.

The candidates tuple is rebuilt when a backend's state changes, never per request
(ARCHITECTURE habit 3: pick from an immutable snapshot).
"""

from __future__ import annotations

from collections.abc import Collection

from balancer.backend import Backend, RequestStats
from balancer.strategies import Strategy


class Pool:
    def __init__(self, backends: tuple[Backend, ...], strategy: Strategy) -> None:
        self.backends = backends
        self.strategy = strategy
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
        return self.strategy.pick(candidates)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def close(self) -> None:
        for backend in self.backends:
            backend.upstream.close()
