"""pool.py: the candidates snapshot and picks; round-robin's turn; the retry budget and rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from balancer.backend import Attempt, Backend
from balancer.config import BackendConfig, parse_config
from balancer.errors import (
    BackendDropped,
    BackendTimeout,
    BadBackendResponse,
    ConnectFailed,
    ProxyError,
)
from balancer.pipeline.retry import may_retry
from balancer.pool import Pool
from balancer.retry_budget import RetryBudget
from balancer.runtime import Runtime
from balancer.strategies import STRATEGIES, UnknownStrategy, make_strategy
from balancer.strategies.round_robin import RoundRobin
from balancer.upstream_pool import UpstreamPool

from support import eventually

MakeBackends = Callable[..., tuple[Backend, ...]]


@pytest.fixture
async def make_backends() -> MakeBackends:
    loop = asyncio.get_running_loop()

    def make(*names: str, weights: dict[str, int] | None = None) -> tuple[Backend, ...]:
        made = []
        for i, name in enumerate(names):
            port = 9001 + i
            upstream = UpstreamPool(
                "127.0.0.1", port, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
            )
            weight = (weights or {}).get(name, 1)
            config = BackendConfig(f"http://127.0.0.1:{port}", name, weight)
            made.append(Backend(config, upstream, clock=lambda: 0.0))
        return tuple(made)

    return make


def runtime_over(pool: Pool, retries: int, budget: RetryBudget) -> Runtime:
    """A Runtime of `pool` with these retry settings (the rest as defaults)."""
    runtime = Runtime(
        config=parse_config("backends:\n  - url: http://127.0.0.1:9001\n"),
        pool=pool,
        retry_budget=budget,
        sticky=None,
        request_key=None,
        retry_after="1",
        retries=retries,
        max_body=0,
        client_body_timeout=60,
        client_send_timeout=60,
        tunnel_idle_timeout=3600,
    )
    return runtime


def pick_names(pool: Pool, n: int) -> list[str]:
    return [b.name for b in (pool.pick() for _ in range(n)) if b is not None]


# -- the candidates snapshot -----------------------------------------------------------------


async def test_candidates_are_one_snapshot_rebuilt_on_state_change_only(
    make_backends: MakeBackends,
) -> None:
    a, b, c = make_backends("a", "b", "c")
    pool = Pool((a, b, c), RoundRobin())
    snapshot = pool.candidates
    assert snapshot == (a, b, c)
    pick_names(pool, 10)
    a.set_mode("enabled")  # no change: no rebuild
    assert pool.candidates is snapshot  # the same tuple object, not rebuilt per pick
    b.set_health("unhealthy")
    assert pool.candidates == (a, c)
    after = pool.candidates
    pick_names(pool, 10)
    assert pool.candidates is after
    b.set_health("healthy")
    assert pool.candidates == (a, b, c)  # file order, not the order they came back in


async def test_weight_zero_is_not_a_candidate(make_backends: MakeBackends) -> None:
    a, b = make_backends("a", "b", weights={"b": 0})
    pool = Pool((a, b), RoundRobin())
    assert pool.candidates == (a,)
    assert set(pick_names(pool, 6)) == {"a"}


async def test_pick_excludes_what_was_tried(make_backends: MakeBackends) -> None:
    a, b, c = make_backends("a", "b", "c")
    pool = Pool((a, b, c), RoundRobin())
    assert {pool.pick(exclude=[a, c]) for _ in range(4)} == {b}
    assert pool.pick(exclude=(a, b, c)) is None
    assert pool.candidates == (a, b, c)  # excluding is per pick, the snapshot stays


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_pick_is_none_when_nothing_is_routable(
    make_backends: MakeBackends, strategy: str
) -> None:
    a, b, c = make_backends("a", "b", "c", weights={"c": 0})
    pool = Pool((a, b, c), make_strategy(strategy))
    a.set_mode("disabled")
    b.set_health("unhealthy")
    assert pool.candidates == ()
    assert pool.pick(key=b"k") is None
    assert repr(pool) == "<Pool [0 of 3 routable]>"


async def test_by_name(make_backends: MakeBackends) -> None:
    a, b = make_backends("a", "b")
    pool = Pool((a, b), RoundRobin())
    assert pool.by_name("b") is b
    assert pool.by_name("a") is a
    assert pool.by_name("c") is None


async def test_in_flight_sums_the_backends(make_backends: MakeBackends) -> None:
    a, b, c = make_backends("a", "b", "c")
    pool = Pool((a, b, c), RoundRobin())
    assert pool.in_flight == 0
    with a.attempt(), a.attempt(), c.attempt():
        assert pool.in_flight == 3
    assert pool.in_flight == 0


async def test_repr_shows_routable_of_all(make_backends: MakeBackends) -> None:
    a, b, c = make_backends("a", "b", "c")
    pool = Pool((a, b, c), RoundRobin())
    assert repr(pool) == "<Pool [3 of 3 routable]>"
    b.set_mode("draining")
    assert repr(pool) == "<Pool [2 of 3 routable]>"


# -- round robin ------------------------------------------------------------------------------


async def test_round_robin_exact_sequence(make_backends: MakeBackends) -> None:
    pool = Pool(make_backends("a", "b", "c"), RoundRobin())
    assert pick_names(pool, 7) == ["a", "b", "c", "a", "b", "c", "a"]


@pytest.mark.parametrize(
    ("before", "leaving", "after"),
    [
        # Position 2 taken modulo the shorter tuple: "c" was next and is still there, but
        # the position now points at "a" (2 % 2 = 0): the turn moves by one.
        (["a", "b"], "b", ["a", "c", "a", "c"]),
        # "c" leaves when it is next: its turn goes to "a", the order goes on.
        (["a", "b"], "c", ["a", "b", "a", "b"]),
        # "a" leaves after one pick: position 1 in ("b", "c") is "c", "b" loses one turn.
        (["a"], "a", ["c", "b", "c", "b"]),
    ],
)
async def test_round_robin_turn_when_the_candidates_shrink(
    make_backends: MakeBackends, before: list[str], leaving: str, after: list[str]
) -> None:
    backends = make_backends("a", "b", "c")
    pool = Pool(backends, RoundRobin())
    assert pick_names(pool, len(before)) == before
    next(b for b in backends if b.name == leaving).set_health("unhealthy")
    assert pick_names(pool, len(after)) == after


async def test_round_robin_turn_when_a_backend_comes_back(make_backends: MakeBackends) -> None:
    a, b, c = make_backends("a", "b", "c")
    b.set_health("unhealthy")
    pool = Pool((a, b, c), RoundRobin())
    assert pick_names(pool, 3) == ["a", "c", "a"]
    b.set_health("healthy")
    assert pick_names(pool, 4) == ["b", "c", "a", "b"]


async def test_backups_are_candidates_only_while_no_primary_is(
    make_backends: MakeBackends,
) -> None:
    loop = asyncio.get_running_loop()
    a, b = make_backends("a", "b")
    upstream = UpstreamPool(
        "127.0.0.1", 9009, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
    )
    spare = Backend(BackendConfig("http://127.0.0.1:9009", "spare", 1, backup=True), upstream)
    pool = Pool((a, spare, b), RoundRobin())
    assert pool.candidates == (a, b)
    a.set_health("unhealthy")
    b.set_mode("disabled")
    assert pool.candidates == (spare,)
    b.set_mode("enabled")
    assert pool.candidates == (b,)


# -- the strategy registry ---------------------------------------------------------------------


def test_unknown_strategy_lists_the_available_ones() -> None:
    with pytest.raises(UnknownStrategy) as unknown:
        make_strategy("fastest")
    message = str(unknown.value)
    assert "'fastest'" in message
    assert f"available: {', '.join(sorted(STRATEGIES))}" in message
    assert isinstance(unknown.value, ValueError)


# -- the retry budget and the retry rule (SPEC §4) ----------------------------------------------


@pytest.mark.parametrize(
    ("percent", "minimum", "retrying", "requests", "allows"),
    [
        (25, 3, 0, 0, True),  # the floor: min_concurrency retries whatever the load
        (25, 3, 2, 0, True),
        (25, 3, 3, 0, False),
        (25, 3, 3, 8, False),  # 25% of 8 is 2: the floor of 3 still rules
        (25, 3, 3, 12, False),  # 25% of 12 is 3: at the budget
        (25, 3, 3, 13, True),  # 3.25: one more retry fits
        (25, 3, 24, 100, True),  # 25% of 100 is 25
        (25, 3, 25, 100, False),
        (50, 0, 0, 0, False),  # no floor, nothing in flight: no retry
        (50, 0, 0, 1, True),
        (0, 1, 0, 1000, True),
        (0, 1, 1, 1000, False),
    ],
)
def test_retry_budget_allows(
    percent: float, minimum: int, retrying: int, requests: int, allows: bool
) -> None:
    budget = RetryBudget(percent, minimum)
    budget.in_flight = retrying
    assert budget.allows(requests) is allows


@pytest.mark.parametrize(
    ("error", "method", "framing", "tries", "retried"),
    [
        (ConnectFailed(), "POST", b"Content-Length: 3", 1, True),  # never reached a backend
        (ConnectFailed(), "GET", None, 2, False),  # retries: 1, this was the second try
        (BackendDropped(), "GET", None, 1, True),
        (BackendDropped(), "DELETE", None, 1, True),
        (BackendDropped(), "POST", None, 1, False),  # not idempotent
        (BackendDropped(), "PATCH", None, 1, False),
        (BackendDropped(), "PUT", b"Content-Length: 3", 1, False),  # its body went out
        (BadBackendResponse(), "GET", None, 1, True),
        (BackendTimeout(), "GET", None, 1, False),  # the backend may still be working
        (ProxyError(), "HEAD", None, 1, True),
    ],
)
async def test_may_retry(
    make_backends: MakeBackends,
    error: ProxyError,
    method: str,
    framing: bytes | None,
    tries: int,
    retried: bool,
) -> None:
    pool = Pool(make_backends("a", "b"), RoundRobin())
    runtime = runtime_over(pool, 1, RetryBudget(20, 3))
    assert may_retry(runtime, error, method, framing, tries, pool.backends[0]) is retried


async def test_may_retry_respects_the_budget(make_backends: MakeBackends) -> None:
    pool = Pool(make_backends("a", "b"), RoundRobin())
    budget = RetryBudget(20, 1)
    runtime = runtime_over(pool, 3, budget)
    failed = pool.backends[0]
    assert may_retry(runtime, ConnectFailed(), "GET", None, 1, failed)
    budget.in_flight = 1
    assert not may_retry(runtime, ConnectFailed(), "GET", None, 1, failed)
    # Away from a backend that is out (breaker open, unhealthy, disabled): not budgeted.
    failed.set_health("unhealthy")
    assert may_retry(runtime, ConnectFailed(), "GET", None, 1, failed)


# -- the queue for a slot (every candidate at its max_connections) ------------------------------


async def capped_pool(queue_timeout: float = 2.0) -> tuple[Pool, Backend, Backend]:
    """One backend with max_connections 1 and one that is down (its changes rebuild the pool)."""
    loop = asyncio.get_running_loop()
    made = []
    for name, port, cap in (("a", 9001, 1), ("spare", 9002, 0)):
        upstream = UpstreamPool(
            "127.0.0.1", port, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
        )
        config = BackendConfig(f"http://127.0.0.1:{port}", name, max_connections=cap)
        made.append(Backend(config, upstream, clock=lambda: 0.0))
    a, spare = made
    spare.set_health("unhealthy")
    return Pool((a, spare), RoundRobin(), queue_timeout=queue_timeout), a, spare


class Requests:
    """Queued requests that, like the proxy, take the slot as soon as they get a backend."""

    def __init__(self, pool: Pool, count: int) -> None:
        self.pool = pool
        self.served: list[int] = []  # who got a backend, in order
        self.slots: list[Attempt] = []
        self.tasks = [asyncio.create_task(self.one(i)) for i in range(count)]

    async def one(self, index: int) -> Backend | None:
        backend = await self.pool.wait_for_slot()
        if backend is not None:
            self.slots.append(backend.attempt().__enter__())  # no await in between
            self.served.append(index)
        return backend

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_a_wake_up_is_passed_on_when_the_woken_request_is_cancelled() -> None:
    pool, a, _ = await capped_pool()
    slot = a.attempt().__enter__()  # a is full: requests queue
    requests = Requests(pool, 3)
    first, second, third = requests.tasks
    await eventually(lambda: pool.queued == 3)
    slot.__exit__(None, None, None)  # a slot frees: `first` is woken...
    first.cancel()  # ...and its client goes away before it ran
    await eventually(lambda: requests.served)  # the wake-up went on to the next in line
    assert requests.served == [1] and second.result() is a
    assert not third.done() and pool.queued == 1  # third still waits, in line
    await requests.close()
    assert first.cancelled() and pool.queued == 0


async def test_queued_requests_keep_their_order_across_a_rebuild() -> None:
    pool, a, spare = await capped_pool()
    slot = a.attempt().__enter__()
    requests = Requests(pool, 3)
    await eventually(lambda: pool.queued == 3)
    for turn in range(3):
        spare.set_mode("disabled" if turn % 2 == 0 else "enabled")  # a rebuild wakes the head
        await eventually(lambda: pool.queued == 3 - len(requests.served))  # it waits again
        slot.__exit__(None, None, None)  # a slot frees
        await eventually(lambda n=turn + 1: len(requests.served) == n)
        slot = requests.slots[-1]  # the one served holds the slot now
    assert requests.served == [0, 1, 2]  # first come, first served, rebuilds or not
    await requests.close()


async def test_every_queued_request_is_answered_at_once_when_nothing_is_routable() -> None:
    pool, a, _ = await capped_pool(queue_timeout=30)
    a.attempt().__enter__()
    requests = Requests(pool, 3)
    await eventually(lambda: pool.queued == 3)
    a.set_mode("disabled")  # one rebuild, one wake-up: each leaving 503 passes it on (SPEC §4)
    await eventually(lambda: all(task.done() for task in requests.tasks), timeout=1)
    assert [task.result() for task in requests.tasks] == [None, None, None]
    assert pool.queued == 0
