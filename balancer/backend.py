"""A backend: its configuration, its live stats and its state.

Every attempt to send a request to a backend goes through `Backend.attempt()`, the one place
that counts in-flight, requests, failures and the latency EWMA, and keeps the attempts still
waiting for their response head in the order they started (`waiting`: the oldest one's age is
a floor on the latency, strategies/response_time.py); the strategies, the breaker and /status
read what it records.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from balancer.breaker import Breaker
from balancer.config import BackendConfig
from balancer.errors import ProxyError
from balancer.upstream_pool import UpstreamPool

Health = Literal["healthy", "unhealthy"]  # what the health checks say
Mode = Literal["enabled", "draining", "disabled"]  # what the operator says (admin API)
State = Literal["healthy", "unhealthy", "draining", "disabled"]  # what /status shows

# The backend state machine as data, in one place: the operator's mode
# and the health checks' verdict are independent inputs; this table gives the state they make
# and the next table what traffic that state takes. The breaker is a third, independent input
# (breaker.py): an open breaker keeps a healthy backend out for reset_timeout.
STATE: dict[tuple[Mode, Health], State] = {
    ("enabled", "healthy"): "healthy",
    ("enabled", "unhealthy"): "unhealthy",
    ("draining", "healthy"): "draining",
    ("draining", "unhealthy"): "unhealthy",
    ("disabled", "healthy"): "disabled",
    ("disabled", "unhealthy"): "disabled",
}
TAKES_NEW_REQUESTS: dict[State, bool] = {
    "healthy": True,
    "unhealthy": False,  # whatever its breaker says (SPEC §2)
    "draining": False,  # existing sticky sessions only
    "disabled": False,  # no requests at all
}
TAKES_STICKY_REQUESTS: dict[State, bool] = {
    "healthy": True,
    "unhealthy": False,
    "draining": True,
    "disabled": False,
}

# Latency histogram buckets in seconds (Prometheus' defaults, which suit request latencies).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Weight of the newest sample in the latency EWMA.
EWMA_ALPHA = 0.2
NEVER = float("-inf")  # a time that has not come yet
# ...or more when the previous sample is old: a sample after a gap of t seconds weighs at least
# 1 - exp(-t / EWMA_TAU) (Finagle's time-decayed EWMA), so a backend that got no traffic while
# it was slow is judged by its first new answer, not by its past. 0.25 s, not 1 s: a probe
# sent after a second or two without traffic (response_time's decay) then all but replaces
# the EWMA, so a backend that has recovered gets its share back at its first fast answer
# rather than over several probes (benchmarks/strategies.py, `recovering`: with 1 s, adaptive
# gave a recovered backend 8 % instead of 33 % of the requests over the seconds after its first
# one back).
EWMA_TAU = 0.25
EWMA_GAP = EWMA_TAU * math.log(1.0 / (1.0 - EWMA_ALPHA))  # 0.056 s


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
        "_on_slot_freed",
        "attempts_total",
        "breaker",
        "bytes_in",
        "bytes_out",
        "config",
        "cpu",
        "failure_statuses",
        "failures_total",
        "health",
        "in_flight",
        "last_check",
        "latency_ewma",
        "latency_updated_at",
        "load_updated_at",
        "memory",
        "mode",
        "name",
        "recovered_at",
        "requests",
        "retries",
        "routable",
        "state",
        "upstream",
        "url",
        "waiting",
        "weight",
    )

    def __init__(
        self,
        config: BackendConfig,
        upstream: UpstreamPool,
        *,
        breaker: Breaker | None = None,
        failure_statuses: frozenset[int] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.name = config.name
        self.url = config.url
        self.weight = config.weight
        self.upstream = upstream
        self.breaker = breaker
        self.failure_statuses = failure_statuses
        self.mode: Mode = "enabled"
        self.health: Health = "healthy"
        self.state: State = "healthy"
        self.routable = self.weight > 0
        self.recovered_at = float("-inf")  # when it last became healthy again (slow start)
        self.cpu: float | None = None  # reported load, 0..1, from health checks
        self.memory: float | None = None
        self.last_check = ""
        self.bytes_in = 0  # request body bytes sent to it
        self.bytes_out = 0  # response body bytes of its answers sent to clients
        self.retries: dict[str, int] = {}  # requests retried elsewhere after it failed, by why
        self.in_flight = 0
        self.attempts_total = 0
        self.failures_total = 0
        self.latency_ewma = 0.0
        self.latency_updated_at = float("-inf")
        # The attempts waiting for their response head, oldest first: a dict as an ordered
        # set (insertion order is start order), O(1) to add and to remove from anywhere.
        self.waiting: dict[Attempt, bool] = {}
        self.load_updated_at = float("-inf")
        self.requests = RequestStats()
        self._clock = clock
        self._on_change: Callable[[], None] = _nothing
        self._on_slot_freed: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Backend {self.name} {self.url} {self.state} weight={self.weight} "
            f"in_flight={self.in_flight} requests={self.attempts_total} "
            f"failures={self.failures_total} ewma={self.latency_ewma * 1000:.1f}ms>"
        )

    @property
    def full(self) -> bool:
        """At its max_connections (never, when it has no cap)."""
        cap = self.config.max_connections
        return bool(cap) and self.in_flight >= cap

    def on_slot_freed(self, callback: Callable[[], None]) -> None:
        """Call `callback` when a request to this capped backend ends (a queued one may go)."""
        self._on_slot_freed = callback

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever routability may have changed (the pool rebuilds)."""
        self._on_change = callback

    def refresh(self) -> None:
        """Recompute state and routability from mode, health and breaker; tell the pool."""
        self.state = STATE[self.mode, self.health]
        breaker = self.breaker
        self.routable = (
            TAKES_NEW_REQUESTS[self.state]
            and self.weight > 0
            and (breaker is None or breaker.admits_new)
        )
        self._on_change()

    @property
    def takes_sticky(self) -> bool:
        """Whether a client pinned to this backend may still reach it (draining: yes)."""
        breaker = self.breaker
        return TAKES_STICKY_REQUESTS[self.state] and (breaker is None or breaker.admits_new)

    def set_mode(self, mode: Mode) -> None:
        if mode != self.mode:
            self.mode = mode
            self.refresh()

    def set_health(self, health: Health) -> None:
        if health != self.health:
            self.health = health
            if health == "healthy":
                self.recovered_at = self._clock()
            self.refresh()

    def breaker_changed(self) -> None:
        """The breaker's callback: a breaker that closes again starts the slow start too."""
        if self.breaker is not None and self.breaker.state == "closed":
            self.recovered_at = self._clock()
        self.refresh()

    def report_load(self, cpu: float | None, memory: float | None) -> None:
        """What the backend says about itself; a value it did not report stays as it was."""
        if cpu is not None:
            self.cpu = cpu
        if memory is not None:
            self.memory = memory
        if cpu is not None or memory is not None:
            self.load_updated_at = self._clock()

    def attempt(self) -> Attempt:
        return Attempt(self)

    @property
    def effective_weight(self) -> int:
        """The weight strategies divide by (candidates never have weight 0)."""
        return self.weight or 1

    def observe_latency(self, seconds: float, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        if self.latency_updated_at == NEVER:  # the first sample (it may be 0.0)
            self.latency_ewma = seconds
        else:
            gap = now - self.latency_updated_at
            alpha = EWMA_ALPHA
            if gap > EWMA_GAP:  # only then does the time-decayed weight exceed EWMA_ALPHA
                alpha = 1.0 - math.exp(-gap / EWMA_TAU)
            self.latency_ewma += alpha * (seconds - self.latency_ewma)
        self.latency_updated_at = now

    def oldest_waiting(self) -> float | None:
        """When the oldest attempt still waiting for its response head started, or None."""
        for attempt in self.waiting:
            return attempt.started
        return None


class Attempt:
    """One try of one request on one backend: the completion hook.

    Entering counts the request in flight and queues it in the backend's `waiting`;
    `head_received` feeds the latency EWMA with the time to the response head and takes it off
    `waiting`; leaving (however it leaves: success, error, cancellation) releases the in-flight
    count and counts the attempt, and a failure if the backend was to blame. An attempt that
    leaves without a head after waiting longer than the EWMA says is a sample of that wait (a
    lower bound of the latency, but above the estimate): a backend whose clients give up on
    it is not judged by its answers from before it turned slow.
    """

    __slots__ = ("backend", "failed", "started", "trial")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.failed = False
        self.started = 0.0
        self.trial = False  # the half-open breaker's one trial request

    def __enter__(self) -> Attempt:
        backend = self.backend
        backend.in_flight += 1
        if backend.breaker is not None:
            self.trial = backend.breaker.begin()
        self.started = backend._clock()
        backend.waiting[self] = True
        return self

    def head_received(self, status: int) -> None:
        """The response head arrived: latency, and whether its status counts as a failure."""
        backend = self.backend
        now = backend._clock()
        backend.observe_latency(now - self.started, now)
        del backend.waiting[self]
        if status in backend.failure_statuses:
            self.failed = True

    def _left_unanswered(self, backend: Backend) -> None:
        now = backend._clock()
        if now - self.started > backend.latency_ewma:
            backend.observe_latency(now - self.started, now)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        backend = self.backend
        if backend.waiting.pop(self, False):  # no head came
            self._left_unanswered(backend)
        backend.in_flight -= 1
        backend.attempts_total += 1
        if backend._on_slot_freed is not None:
            backend._on_slot_freed()
        failed = self.failed or (isinstance(exc, ProxyError) and exc.backend_failure)
        if failed:
            backend.failures_total += 1
        breaker = backend.breaker
        if breaker is not None:
            if failed or exc is None:
                breaker.record(not failed)
            elif self.trial:
                breaker.abandon_trial()  # cancelled: it told nothing, let another try


def _nothing() -> None:
    return None
