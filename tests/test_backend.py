"""backend.py: the completion hook of an attempt, the stats it keeps, states and routability."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from balancer.backend import DURATION_BUCKETS, EWMA_GAP, EWMA_TAU, Backend, Mode, RequestStats
from balancer.config import BackendConfig
from balancer.errors import (
    BackendDropped,
    BackendTimeout,
    BadBackendResponse,
    ClientGone,
    ConnectFailed,
    NoBackendAvailable,
    ProxyError,
)
from balancer.upstream_pool import UpstreamPool

MakeBackend = Callable[..., Backend]


class Clock:
    """Hands out the given times in order, one per call, then the last one again."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


@pytest.fixture
async def make_backend() -> MakeBackend:
    loop = asyncio.get_running_loop()

    def make(
        name: str = "app1",
        weight: int = 1,
        clock: Callable[[], float] | None = None,
        failure_statuses: frozenset[int] = frozenset(),
    ) -> Backend:
        upstream = UpstreamPool(
            "127.0.0.1", 9001, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
        )
        config = BackendConfig("http://127.0.0.1:9001", name, weight)
        return Backend(config, upstream, clock=clock or Clock(), failure_statuses=failure_statuses)

    return make


# -- the completion hook ---------------------------------------------------------------------


async def test_in_flight_is_counted_inside_the_attempt_only(make_backend: MakeBackend) -> None:
    backend = make_backend(clock=Clock(0.0, 0.0))
    with backend.attempt():
        assert backend.in_flight == 1
        with backend.attempt():
            assert backend.in_flight == 2
        assert backend.in_flight == 1
    assert backend.in_flight == 0
    assert backend.attempts_total == 2
    assert backend.failures_total == 0


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (ConnectFailed(), True),
        (BackendDropped(), True),
        (BackendTimeout(), True),
        (BadBackendResponse(), True),
        (ProxyError(), True),
        (ClientGone(), False),
        (NoBackendAvailable(), False),
        (ValueError("not a proxy error"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
async def test_an_error_leaving_the_attempt_is_counted(
    make_backend: MakeBackend, error: Exception, failure: bool
) -> None:
    backend = make_backend(clock=Clock(0.0))
    with pytest.raises(type(error)), backend.attempt():
        assert backend.in_flight == 1
        raise error
    assert backend.in_flight == 0
    assert backend.attempts_total == 1
    assert backend.failures_total == int(failure)


async def test_a_cancelled_attempt_releases_in_flight_and_is_no_failure(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(clock=Clock(0.0))
    with pytest.raises(asyncio.CancelledError), backend.attempt():
        raise asyncio.CancelledError
    assert (backend.in_flight, backend.attempts_total, backend.failures_total) == (0, 1, 0)


async def test_a_task_cancelled_while_awaiting_inside_the_attempt_releases_it(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(clock=Clock(0.0))
    entered = asyncio.Event()

    async def request() -> None:
        with backend.attempt():
            entered.set()
            await asyncio.Event().wait()  # a backend that never answers

    task = asyncio.ensure_future(request())
    await entered.wait()
    assert backend.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (backend.in_flight, backend.attempts_total, backend.failures_total) == (0, 1, 0)


async def test_attempt_failed_counts_a_failure_without_an_error(make_backend: MakeBackend) -> None:
    backend = make_backend(clock=Clock(0.0))
    with backend.attempt() as attempt:
        attempt.failed = True  # e.g. the backend broke off mid-body, after the head
    assert (backend.attempts_total, backend.failures_total) == (1, 1)


@pytest.mark.parametrize(("status", "failure"), [(200, False), (404, False), (503, True)])
async def test_a_failure_status_counts_as_a_failure(
    make_backend: MakeBackend, status: int, failure: bool
) -> None:
    backend = make_backend(clock=Clock(10.0, 10.5), failure_statuses=frozenset({500, 503}))
    with backend.attempt() as attempt:
        attempt.head_received(status)
    assert backend.failures_total == int(failure)


# -- latency EWMA ----------------------------------------------------------------------------


async def test_latency_ewma_first_sample_exact_then_alpha_0_2(make_backend: MakeBackend) -> None:
    # enter / head_received pairs, back to back: 31.25 ms, 46.875 ms, then 15.625 ms to the
    # head (gaps under EWMA_GAP, 56 ms: the time-decayed weight 1 - e^(-gap/tau) stays under
    # 0.2).
    clock = Clock(1.0, 1.03125, 1.03125, 1.078125, 1.078125, 1.09375)
    backend = make_backend(clock=clock)
    expected = []
    for _ in range(3):
        with backend.attempt() as attempt:
            attempt.head_received(200)
        expected.append(backend.latency_ewma)
    assert EWMA_GAP > 0.046875
    assert expected[0] == 0.03125  # the first sample, as it is
    assert expected[1] == 0.03125 + 0.2 * (0.046875 - 0.03125)
    assert expected[2] == expected[1] + 0.2 * (0.015625 - expected[1])
    assert backend.latency_updated_at == 1.09375
    assert clock.calls == 6  # one clock read entering, one at the head: none per exit


async def test_a_sample_after_a_long_gap_outweighs_the_past(make_backend: MakeBackend) -> None:
    """A backend that got no traffic while it was slow is judged by its first new answer."""
    backend = make_backend(clock=Clock(0.0))
    backend.observe_latency(0.100, now=10.0)  # slow
    backend.observe_latency(0.010, now=10.5)  # 0.5 s later, fast again: weight 1 - e^-2
    assert EWMA_TAU == 0.25
    fast_again = 0.010 + 0.090 * math.exp(-0.5 / EWMA_TAU)
    assert backend.latency_ewma == pytest.approx(fast_again)
    backend.observe_latency(0.100, now=10.51)  # back to back: the usual 0.2
    assert backend.latency_ewma == pytest.approx(fast_again + 0.2 * (0.100 - fast_again))


async def test_an_attempt_without_a_head_leaves_the_latency_alone(
    make_backend: MakeBackend,
) -> None:
    backend = make_backend(clock=Clock(1.0, 1.0))
    with pytest.raises(ConnectFailed), backend.attempt():
        raise ConnectFailed()
    assert backend.latency_ewma == 0.0
    assert backend.latency_updated_at == float("-inf")
    assert not backend.waiting


class Now:
    """A clock that says what it is told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_the_oldest_waiting_attempt_is_known_whatever_order_heads_arrive(
    make_backend: MakeBackend,
) -> None:
    now = Now()
    backend = make_backend(clock=now)
    attempts = []
    for _ in range(3):  # started at 100.0, 100.1, 100.2
        attempts.append(backend.attempt().__enter__())
        now.now += 0.1
    a, b, c = attempts
    assert backend.oldest_waiting() == 100.0
    b.head_received(200)  # out of order: a still waits
    assert backend.oldest_waiting() == 100.0
    b.__exit__(None, None, None)
    a.head_received(200)  # the oldest answered: c is the oldest now
    assert backend.oldest_waiting() == pytest.approx(100.2)
    assert list(backend.waiting) == [c]
    with pytest.raises(ConnectFailed):
        c.__exit__(ConnectFailed, ConnectFailed(), None)  # left without a head
        raise ConnectFailed()
    assert backend.oldest_waiting() is None and not backend.waiting
    a.__exit__(None, None, None)
    assert backend.in_flight == 0


async def test_nothing_piles_up_behind_a_stuck_attempt(
    make_backend: MakeBackend,
) -> None:
    now = Now()
    backend = make_backend(clock=now)
    stuck = backend.attempt().__enter__()  # a long poll: no head for a long time
    longest = 0
    for _ in range(5000):
        now.now += 0.001
        with backend.attempt() as attempt:
            longest = max(longest, len(backend.waiting))
            attempt.head_received(200)
    assert longest == 2  # the stuck one and the one in progress: nothing piles up behind it
    assert backend.oldest_waiting() == 100.0
    stuck.head_received(200)
    assert not backend.waiting


async def test_leaving_without_a_head_after_waiting_longer_than_the_ewma_is_a_sample(
    make_backend: MakeBackend,
) -> None:
    """A client that gave up after 1 s says the backend takes at least 1 s: above the 50 ms
    EWMA, it counts (time-decayed weight, 1 s after the last sample: 1 - e^-4); a refusal
    within 10 ms says nothing the EWMA does not already say."""
    now = Now()
    backend = make_backend(clock=now)
    backend.observe_latency(0.050)
    with pytest.raises(ClientGone), backend.attempt():
        now.now += 1.0
        raise ClientGone()
    assert backend.latency_ewma == pytest.approx(0.050 + (1 - math.exp(-1.0 / EWMA_TAU)) * 0.950)
    assert backend.latency_updated_at == 101.0
    before = backend.latency_ewma
    with pytest.raises(ConnectFailed), backend.attempt():
        now.now += 0.010
        raise ConnectFailed()
    assert backend.latency_ewma == before and backend.latency_updated_at == 101.0


# -- RequestStats ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "bucket"),
    [
        (0.0, 0),
        (0.005, 0),  # a bucket counts durations up to and including its bound (Prometheus le)
        (0.0051, 1),
        (0.1, 5),
        (0.3, 7),
        (10.0, len(DURATION_BUCKETS) - 1),
        (10.01, len(DURATION_BUCKETS)),  # +Inf
        (3600.0, len(DURATION_BUCKETS)),
    ],
)
def test_request_stats_bucket(duration: float, bucket: int) -> None:
    stats = RequestStats()
    stats.record(200, duration)
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[bucket] = 1
    assert stats.bucket_counts == expected


def test_request_stats_codes_sum_and_count() -> None:
    stats = RequestStats()
    for status, duration in [(200, 0.5), (200, 0.25), (502, 1.0), (404, 0.25)]:
        stats.record(status, duration)
    assert stats.codes == {200: 2, 502: 1, 404: 1}
    assert stats.duration_sum == 2.0
    assert stats.duration_count == 4
    assert sum(stats.bucket_counts) == 4


# -- states and routability -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "healthy", "state", "routable", "sticky"),
    [
        ("enabled", True, "healthy", True, True),
        ("enabled", False, "unhealthy", False, False),
        ("draining", True, "draining", False, True),
        ("draining", False, "unhealthy", False, False),
        ("disabled", True, "disabled", False, False),
        ("disabled", False, "disabled", False, False),
    ],
)
async def test_state_and_routability(
    make_backend: MakeBackend,
    mode: Mode,
    healthy: bool,
    state: str,
    routable: bool,
    sticky: bool,
) -> None:
    backend = make_backend(clock=lambda: 0.0)
    backend.set_mode(mode)
    backend.set_health("healthy" if healthy else "unhealthy")
    assert (backend.state, backend.routable, backend.takes_sticky) == (state, routable, sticky)


async def test_weight_zero_is_never_routable(make_backend: MakeBackend) -> None:
    backend = make_backend(weight=0, clock=lambda: 0.0)
    assert (backend.state, backend.routable) == ("healthy", False)
    backend.set_health("unhealthy")
    backend.set_health("healthy")
    assert (backend.state, backend.routable) == ("healthy", False)
    assert backend.effective_weight == 1


async def test_the_change_callback_runs_only_on_a_real_change(make_backend: MakeBackend) -> None:
    backend = make_backend(clock=lambda: 5.0)
    changes: list[str] = []
    backend.on_change(lambda: changes.append(backend.state))
    backend.set_mode("enabled")
    backend.set_health("healthy")
    assert changes == []
    backend.set_mode("draining")
    backend.set_mode("draining")
    backend.set_health("unhealthy")
    backend.set_health("unhealthy")
    backend.set_mode("enabled")
    backend.set_health("healthy")
    assert changes == ["draining", "unhealthy", "unhealthy", "healthy"]
    assert backend.recovered_at == 5.0  # healthy again: the slow start counts from here


async def test_repr_shows_the_state(make_backend: MakeBackend) -> None:
    backend = make_backend(name="app1", weight=3, clock=Clock(1.0, 1.0042, 2.0))
    with backend.attempt() as attempt:
        attempt.head_received(200)
        with backend.attempt():
            assert repr(backend) == (
                "<Backend app1 http://127.0.0.1:9001 healthy weight=3 in_flight=2 "
                "requests=0 failures=0 ewma=4.2ms>"
            )
            backend.set_mode("draining")
            attempt.failed = True
    assert repr(backend) == (
        "<Backend app1 http://127.0.0.1:9001 draining weight=3 in_flight=0 "
        "requests=2 failures=1 ewma=4.2ms>"
    )
