"""The set of backends and the snapshot of those a strategy may pick.

The candidates tuple is rebuilt when a backend's state changes, never per request
(pick from an immutable snapshot). Requests that find every candidate
at its max_connections queue first come, first served; a wake-up is never lost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Collection

from balancer.backend import Backend, RequestStats
from balancer.strategies import Strategy, rebuild_hook


class _Place:
    """A queued request's place in line: it keeps it across wake-ups that find no slot."""

    __slots__ = ("woken",)

    def __init__(self, woken: asyncio.Future[None]) -> None:
        self.woken = woken


class Pool:
    def __init__(
        self,
        backends: tuple[Backend, ...],
        strategy: Strategy,
        *,
        slow_start: float = 0.0,
        queue_size: int = 100,
        queue_timeout: float = 5.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = backends
        self._by_name = {b.name: b for b in backends}
        self.strategy = strategy
        self.slow_start = slow_start
        self._rng = rng or random.Random()
        self._clock = clock
        self.candidates: tuple[Backend, ...] = ()
        # Requests answered without any backend (503 when none could be picked).
        self.unrouted = RequestStats()
        # Some backend caps its requests in flight: picks skip full ones, and requests wait
        # for a slot in the queue (HAProxy's maxconn + queue), off unless configured.
        self.capped = any(b.config.max_connections for b in backends)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self._waiters: deque[_Place] = deque()  # FIFO; a woken one stays until it leaves
        self.successor: Pool | None = None  # the next Runtime's pool, after a reload
        for backend in backends:
            backend.on_change(self.rebuild)
            if backend.config.max_connections:
                backend.on_slot_freed(self._wake_waiter)
        self.rebuild()

    def __repr__(self) -> str:
        return f"<Pool [{len(self.candidates)} of {len(self.backends)} routable]>"

    def rebuild(self) -> None:
        """Backup backends are candidates only while no primary is (HAProxy's `backup`)."""
        routable = [b for b in self.backends if b.routable]
        primaries = tuple(b for b in routable if not b.config.backup)
        self.candidates = primaries or tuple(routable)
        self._tell_strategy()
        self._wake_waiter()

    def set_strategy(self, strategy: Strategy) -> None:
        """Swap the strategy; one that keeps state of the members gets it now, not per pick."""
        self.strategy = strategy
        self._tell_strategy()

    def _tell_strategy(self) -> None:
        # Off the request path (SPEC §2): consistent_hash builds its ring here, and only when
        # the members or their weights changed; other strategies have no hook and pay nothing.
        if (hook := rebuild_hook(self.strategy)) is not None:
            hook(self.backends)

    def by_name(self, name: str) -> Backend | None:
        return self._by_name.get(name)

    def pick(self, exclude: Collection[Backend] = (), key: bytes | None = None) -> Backend | None:
        """A backend for a new request, or None when none is routable."""
        candidates = self.candidates
        if exclude:
            candidates = tuple(b for b in candidates if b not in exclude)
        if self.capped:
            candidates = tuple(b for b in candidates if not b.full)
        if not candidates:
            return None
        backend = self.strategy.pick(candidates, key)
        if self.slow_start and len(candidates) > 1:
            # Slow start: a backend back for t seconds takes about t/slow_start of its share;
            # the rest of its turns go to one of the others at random (asking the strategy
            # again would move its own state, round-robin's turn, and skew the ramp).
            share = (self._clock() - backend.recovered_at) / self.slow_start
            if share < 1.0 and self._rng.random() >= share:
                return self._rng.choice([b for b in candidates if b is not backend])
        return backend

    def all_full(self, exclude: Collection[Backend] = ()) -> bool:
        """Some candidate exists but every one is at its max_connections."""
        candidates = [b for b in self.candidates if b not in exclude]
        return self.capped and bool(candidates) and all(b.full for b in candidates)

    async def wait_for_slot(
        self, exclude: Collection[Backend] = (), key: bytes | None = None
    ) -> Backend | None:
        """Queue until a capped backend has a slot: the backend, or None when the queue is
        full or queue.timeout passed (the caller answers 503)."""
        if len(self._waiters) >= self.queue_size:
            return None
        loop = asyncio.get_running_loop()
        place = _Place(loop.create_future())
        self._waiters.append(place)
        backend = None
        try:
            async with asyncio.timeout(self.queue_timeout):
                while True:
                    await place.woken
                    if self.successor is not None:
                        break  # a reload: wait in the new pool's queue instead
                    backend = self.pick(exclude, key)
                    if backend is not None or not self.all_full(exclude):
                        break  # a slot, or nothing routable any more: 503 at once
                    place.woken = loop.create_future()  # woken for nothing: wait in place
        except TimeoutError:
            pass
        finally:
            self._waiters.remove(place)
            if backend is None and place.woken.done() and not place.woken.cancelled():
                # Woken (a slot freed, a rebuild) but leaving without a backend: cancelled,
                # timed out or 503. The wake-up goes to the next in line, never lost.
                self._wake_waiter()
        if backend is None and self.successor is not None:
            return await self.successor.wait_for_slot(exclude, key)
        return backend

    def succeeded_by(self, pool: Pool) -> None:
        """A reload replaced this pool: requests queued here move to the new one's queue."""
        self.successor = pool
        for place in self._waiters:
            if not place.woken.done():
                place.woken.set_result(None)

    def _wake_waiter(self) -> None:
        """Wake the first in line not woken yet (the woken ones keep their places)."""
        for place in self._waiters:
            if not place.woken.done():
                place.woken.set_result(None)
                return

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.backends)

    def close(self) -> None:
        for backend in self.backends:
            backend.upstream.close()
            if backend.breaker is not None:
                backend.breaker.close()
