"""A backend: its configuration, its live stats and its state.

Every attempt to send a request to a backend goes through `Backend.attempt()`, the one place
that counts in-flight, requests, failures and the latency EWMA (ARCHITECTURE habit 4); the
strategies, the breaker and /status read what it records.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from balancer.config import BackendConfig
from balancer.errors import ProxyError
from balancer.upstream import UpstreamPool

State = Literal["healthy", "unhealthy", "draining", "disabled"]

# Which states take which traffic, in one table (ARCHITECTURE habit 7).
TAKES_NEW_REQUESTS: dict[State, bool] = {
    "healthy": True,
    "unhealthy": False,
    "draining": False,  # existing sticky sessions only
    "disabled": False,
}

# Latency histogram buckets in seconds (Prometheus' defaults, which suit request latencies).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Weight of the newest sample in the latency EWMA.
EWMA_ALPHA = 0.2


class RequestStats:
    """What was answered through one backend: status codes and a duration histogram."""

    __slots__ = ("bucket_counts", "codes", "duration_count", "duration_sum")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.bucket_counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.duration_count = 0

    def record(self, status: int, duration: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.bucket_counts[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.duration_count += 1


class Backend:
    """One backend server. Not thread-safe: it lives on one event loop."""

    __slots__ = (
        "_clock",
        "_on_change",
        "config",
        "failures_total",
        "in_flight",
        "latency_ewma",
        "name",
        "requests",
        "requests_total",
        "state",
        "upstream",
        "url",
        "weight",
    )

    def __init__(
        self,
        config: BackendConfig,
        upstream: UpstreamPool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.weight = config.weight
        self.upstream = upstream
        self.state: State = "healthy"
        self.in_flight = 0
        self.requests_total = 0
        self.failures_total = 0
        self.latency_ewma = 0.0
        self.requests = RequestStats()
        self._clock = clock
        self._on_change: Callable[[], None] = _nothing

    def __repr__(self) -> str:
        return (
            f"<Backend {self.name} {self.url} {self.state} weight={self.weight} "
            f"in_flight={self.in_flight} requests={self.requests_total} "
            f"failures={self.failures_total} ewma={self.latency_ewma * 1000:.1f}ms>"
        )

    @property
    def routable(self) -> bool:
        """Whether a strategy may pick this backend for a new request."""
        return TAKES_NEW_REQUESTS[self.state] and self.weight > 0

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever routability may have changed (the pool rebuilds)."""
        self._on_change = callback

    def set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self._on_change()

    def attempt(self) -> Attempt:
        return Attempt(self)

    def observe_latency(self, seconds: float) -> None:
        if self.latency_ewma == 0.0:
            self.latency_ewma = seconds
        else:
            self.latency_ewma += EWMA_ALPHA * (seconds - self.latency_ewma)


class Attempt:
    """One try of one request on one backend: the completion hook.

    Entering counts the request in flight; `head_received` feeds the latency EWMA with the time
    to the response head; leaving (however it leaves: success, error, cancellation) releases
    the in-flight count and counts the attempt, and a failure if the backend was to blame.
    """

    __slots__ = ("backend", "failed", "started")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.failed = False
        self.started = 0.0

    def __enter__(self) -> Attempt:
        backend = self.backend
        backend.in_flight += 1
        self.started = backend._clock()
        return self

    def head_received(self) -> None:
        backend = self.backend
        backend.observe_latency(backend._clock() - self.started)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        backend = self.backend
        backend.in_flight -= 1
        backend.requests_total += 1
        if self.failed or (isinstance(exc, ProxyError) and exc.backend_failure):
            backend.failures_total += 1


def _nothing() -> None:
    return None
