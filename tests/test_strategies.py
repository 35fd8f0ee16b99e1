"""Every strategy through one conformance suite, then each by its own promise."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections import Counter
from collections.abc import Callable

import pytest

from balancer.backend import Attempt, Backend
from balancer.config import AdaptiveConfig, AdaptiveWeights, BackendConfig
from balancer.pool import Pool
from balancer.strategies import STRATEGIES, UnknownStrategy, make_strategy
from balancer.strategies.consistent_hash import ConsistentHash
from balancer.strategies.response_time import latency
from balancer.strategies.ring import MAX_POINTS, VNODES, Ring, ring_hash, vnodes
from balancer.upstream_pool import UpstreamPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MakeBackend = Callable[..., Backend]


@pytest.fixture
async def make_backend() -> MakeBackend:
    loop = asyncio.get_running_loop()

    def make(
        name: str,
        weight: int = 1,
        clock: Callable[[], float] | None = None,
        max_connections: int = 0,
    ) -> Backend:
        upstream = UpstreamPool(
            "127.0.0.1", 9, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
        )
        config = BackendConfig(
            f"http://127.0.0.1:{9}", name, weight, max_connections=max_connections
        )
        return Backend(config, upstream, clock=clock or Clock())

    return make


def strategy(name: str, seed: int = 1, clock: Callable[[], float] | None = None) -> object:
    return make_strategy(name, rng=random.Random(seed), clock=clock or Clock())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
class TestConformance:
    async def test_one_candidate_is_always_picked(
        self, name: str, make_backend: MakeBackend
    ) -> None:
        only = make_backend("a")
        chosen = strategy(name)
        assert {chosen.pick((only,), b"k%d" % i) for i in range(20)} == {only}  # type: ignore[attr-defined]

    async def test_no_candidate_is_503_in_the_pool(
        self, name: str, make_backend: MakeBackend
    ) -> None:
        backend = make_backend("a", weight=0)
        assert Pool((backend,), make_strategy(name)).pick() is None

    async def test_picks_only_candidates_and_every_one_of_them(
        self, name: str, make_backend: MakeBackend
    ) -> None:
        backends = tuple(make_backend(n) for n in "abc")
        chosen = strategy(name)
        picks = Counter(chosen.pick(backends, b"key-%d" % i).name for i in range(300))  # type: ignore[attr-defined]
        assert set(picks) == {"a", "b", "c"}

    async def test_down_then_up(self, name: str, make_backend: MakeBackend) -> None:
        backends = tuple(make_backend(n) for n in "abc")
        pool = Pool(backends, make_strategy(name, rng=random.Random(3)))
        backends[1].set_health("unhealthy")
        assert "b" not in {pool.pick(key=b"k%d" % i).name for i in range(100)}  # type: ignore[union-attr]
        backends[1].set_health("healthy")
        assert "b" in {pool.pick(key=b"k%d" % i).name for i in range(300)}  # type: ignore[union-attr]

    async def test_swapping_the_strategy_keeps_the_stats(
        self, name: str, make_backend: MakeBackend
    ) -> None:
        backends = tuple(make_backend(n) for n in "ab")
        pool = Pool(backends, make_strategy("round_robin"))
        backends[0].observe_latency(0.2)
        backends[0].attempts_total = 7
        pool.strategy = make_strategy(name)
        assert pool.pick(key=b"x") in backends
        assert backends[0].attempts_total == 7 and backends[0].latency_ewma == 0.2


async def test_unknown_strategy_lists_the_available_ones() -> None:
    with pytest.raises(UnknownStrategy, match="available: adaptive, consistent_hash"):
        make_strategy("fastest")


async def test_round_robin_exact_sequence(make_backend: MakeBackend) -> None:
    backends = tuple(make_backend(n) for n in "abc")
    chosen = strategy("round_robin")
    assert "".join(chosen.pick(backends).name for _ in range(7)) == "abcabca"  # type: ignore[attr-defined]


async def test_weighted_is_smooth_like_nginx(make_backend: MakeBackend) -> None:
    backends = (make_backend("a", 5), make_backend("b", 1), make_backend("c", 1))
    chosen = strategy("weighted")
    assert "".join(chosen.pick(backends).name for _ in range(14)) == "aabacaa" * 2  # type: ignore[attr-defined]


async def test_weighted_three_to_one_exactly(make_backend: MakeBackend) -> None:
    backends = (make_backend("a", 3), make_backend("b", 1))
    chosen = strategy("weighted")
    assert Counter(chosen.pick(backends).name for _ in range(400)) == {"a": 300, "b": 100}  # type: ignore[attr-defined]


async def test_least_connections_per_weight_with_fair_ties(make_backend: MakeBackend) -> None:
    a, b, c = make_backend("a"), make_backend("b"), make_backend("c", 2)
    a.in_flight, b.in_flight, c.in_flight = 1, 1, 2  # c: 2 / weight 2 = 1 too: a three-way tie
    chosen = strategy("least_connections")
    assert set(chosen.pick((a, b, c)).name for _ in range(60)) == {"a", "b", "c"}  # type: ignore[attr-defined]
    b.in_flight = 0
    assert {chosen.pick((a, b, c)).name for _ in range(20)} == {"b"}  # type: ignore[attr-defined]


async def test_response_time_prefers_the_fast_and_retries_the_slow_after_decay(
    make_backend: MakeBackend,
) -> None:
    clock = Clock()
    fast, slow = make_backend("fast", clock=clock), make_backend("slow", clock=clock)
    fast.observe_latency(0.010)
    slow.observe_latency(0.050)
    chosen = strategy("response_time", clock=clock)
    assert {chosen.pick((fast, slow)).name for _ in range(10)} == {"fast"}  # type: ignore[attr-defined]
    fast.in_flight = 4  # 0.010 x 1.5 < 0.050: a few in flight do not make a fast one slow
    assert chosen.pick((fast, slow)).name == "fast"  # type: ignore[attr-defined]
    fast.in_flight = 40  # 0.010 x 6 > 0.050: no herding onto the fastest
    assert chosen.pick((fast, slow)).name == "slow"  # type: ignore[attr-defined]
    fast.in_flight = 0
    fast.observe_latency(0.010)  # fast keeps being measured; slow is not
    clock.now += 1.5  # three half-lives: slow's 50 ms reads as 6.25 ms
    fast.latency_updated_at = clock.now
    assert chosen.pick((fast, slow)).name == "slow"  # type: ignore[attr-defined]


async def test_adaptive_score_follows_the_spec(make_backend: MakeBackend) -> None:
    clock = Clock()
    a, b = make_backend("a", clock=clock), make_backend("b", clock=clock)
    a.in_flight, b.in_flight = 4, 2
    a.observe_latency(0.020)
    b.observe_latency(0.010)
    a.report_load(0.1, 0.2)  # b reports nothing: 0.5 each
    chosen = make_strategy(
        "adaptive",
        adaptive=AdaptiveConfig(AdaptiveWeights(), capacity=8),
        rng=random.Random(1),
        clock=clock,
    )
    # a: 0.4*4/8 + 0.3*1 + 0.2*0.1 + 0.1*0.2 = 0.54; b: 0.4*2/8 + 0.3*0.5 + 0.2*0.5 + 0.1*0.5 = 0.4
    assert chosen.score(a, 0.020, 0.020, clock.now) == pytest.approx(0.54)  # type: ignore[attr-defined]
    assert chosen.score(b, 0.010, 0.020, clock.now) == pytest.approx(0.4)  # type: ignore[attr-defined]
    assert chosen.pick((a, b)).name == "b"
    clock.now += 31  # a's report is stale now: neutral 0.5 again
    assert chosen.score(a, 0.020, 0.020, clock.now) == pytest.approx(0.2 + 0.3 + 0.1 + 0.05)  # type: ignore[attr-defined]


async def test_adaptive_connections_are_in_flight_over_capacity_at_most_1(
    make_backend: MakeBackend,
) -> None:
    capped, uncapped = make_backend("capped", max_connections=4), make_backend("uncapped")
    chosen = make_strategy("adaptive", adaptive=AdaptiveConfig(capacity=10))
    capped.in_flight = uncapped.in_flight = 2
    assert chosen.connections(capped) == 0.5  # type: ignore[attr-defined]  # its max_connections
    assert chosen.connections(uncapped) == 0.2  # type: ignore[attr-defined]  # adaptive.capacity
    capped.in_flight = uncapped.in_flight = 25
    assert chosen.connections(capped) == chosen.connections(uncapped) == 1.0  # type: ignore[attr-defined]
    capped.in_flight = uncapped.in_flight = 0
    assert chosen.connections(capped) == chosen.connections(uncapped) == 0.0  # type: ignore[attr-defined]
    assert AdaptiveConfig().capacity == 32  # the measured default (README)


async def test_adaptive_with_default_weights_keeps_off_an_idle_slow_backend(
    make_backend: MakeBackend,
) -> None:
    """The old in-flight term (over the largest in flight) made an idle slow backend win as
    soon as the fast one had one request in flight; over a capacity it takes many."""
    clock = Clock()
    fast, slow = make_backend("fast", clock=clock), make_backend("slow", clock=clock)
    fast.observe_latency(0.010)
    slow.observe_latency(0.050)
    chosen = make_strategy("adaptive", rng=random.Random(1), clock=clock)
    for in_flight in (1, 4, 8, 16):
        fast.in_flight = in_flight
        assert chosen.pick((fast, slow)).name == "fast", in_flight  # type: ignore[attr-defined]
    fast.in_flight = 32  # at its capacity (the default, 32): 0.4 + 0.3 * 0.2 > 0.3
    assert chosen.pick((fast, slow)).name == "slow"  # type: ignore[attr-defined]


def enter(backend: Backend) -> Attempt:
    """An attempt started now on `backend` (left open: waiting for its head)."""
    return backend.attempt().__enter__()


async def test_latency_decays_only_with_nothing_waiting(make_backend: MakeBackend) -> None:
    clock = Clock()
    backend = make_backend("a", clock=clock)
    backend.observe_latency(0.040)
    clock.now += 1.0  # idle for two half-lives: a quarter
    assert latency(backend, clock.now) == pytest.approx(0.010)
    attempt = enter(backend)  # a request goes out: the EWMA counts as it is, undecayed
    assert latency(backend, clock.now) == 0.040
    clock.now += 0.030
    assert latency(backend, clock.now) == 0.040  # still waiting, younger than the EWMA
    attempt.head_received(200)  # answered in 30 ms
    attempt.__exit__(None, None, None)
    assert latency(backend, clock.now) == pytest.approx(backend.latency_ewma)
    clock.now += 0.5
    assert latency(backend, clock.now) == pytest.approx(backend.latency_ewma / 2)


async def test_the_oldest_waiting_request_is_a_floor_on_the_latency(
    make_backend: MakeBackend,
) -> None:
    clock = Clock()
    backend = make_backend("a", clock=clock)
    backend.observe_latency(0.010)
    first = enter(backend)
    clock.now += 0.1
    second = enter(backend)
    clock.now += 0.4
    assert latency(backend, clock.now) == pytest.approx(0.5)  # first's age, not 10 ms
    second.head_received(200)  # answered out of order: first still waits
    second.__exit__(None, None, None)
    clock.now += 0.5
    assert latency(backend, clock.now) == pytest.approx(1.0)
    first.head_received(200)  # its 1 s answer is a sample now; nothing waits
    first.__exit__(None, None, None)
    assert not backend.waiting
    assert latency(backend, clock.now) == pytest.approx(backend.latency_ewma)
    assert backend.latency_ewma > 0.4  # 10 ms, then answers of 0.4 s and 1 s


@pytest.mark.parametrize("name", ["response_time", "p2c", "adaptive"])
async def test_a_backend_turning_slow_loses_its_traffic_before_any_slow_answer(
    name: str, make_backend: MakeBackend
) -> None:
    """Both answered in 10 ms until now; b's requests since have waited 300 ms without an
    answer. Before, b's EWMA (no sample for 300 ms) read as decayed: b looked the faster."""
    clock = Clock()
    a, b = make_backend("a", clock=clock), make_backend("b", clock=clock)
    a.observe_latency(0.010)
    b.observe_latency(0.010)
    for _ in range(3):
        enter(b)  # b turned slow: its requests wait
    clock.now += 0.300
    waiting_a = enter(a)  # a answers as before
    a.observe_latency(0.010)
    chosen = strategy(name, clock=clock)
    picks = Counter(chosen.pick((a, b)).name for _ in range(50))  # type: ignore[attr-defined]
    assert picks == {"a": 50}, picks
    waiting_a.head_received(200)


async def test_p2c_never_lets_the_worse_of_a_pair_win(make_backend: MakeBackend) -> None:
    backends = tuple(make_backend(n) for n in "abcd")
    for index, backend in enumerate(backends):
        backend.observe_latency(0.01 * (index + 1))  # a best, d worst
    chosen = strategy("p2c", seed=7)
    picks = Counter(chosen.pick(backends).name for _ in range(600))  # type: ignore[attr-defined]
    assert "d" not in picks  # d loses every pair it is in
    assert picks["a"] > picks["b"] > picks["c"] > 0


async def test_consistent_hash_moves_only_the_keys_of_a_backend_that_leaves(
    make_backend: MakeBackend,
) -> None:
    backends = tuple(make_backend(n) for n in ("app1", "app2", "app3"))
    chosen = ConsistentHash(random.Random(1))
    keys = [b"client-%d" % i for i in range(6000)]
    before = {k: chosen.pick(backends, k).name for k in keys}
    assert {chosen.pick(backends, k).name for k in keys[:50]} == {before[k] for k in keys[:50]}
    shares = Counter(before.values())
    assert all(1400 < count < 2600 for count in shares.values()), shares
    after = {k: chosen.pick(backends[:2], k).name for k in keys}  # app3 leaves
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "app3" for k in moved)  # nobody else's keys move
    assert len(moved) == shares["app3"]  # ~1/3 of the keys, exactly app3's


async def test_slow_start_ramps_a_recovered_backend_up(make_backend: MakeBackend) -> None:
    clock = Clock()
    backends = tuple(make_backend(n, clock=clock) for n in "ab")
    pool = Pool(
        backends, make_strategy("round_robin"), slow_start=10.0, rng=random.Random(5), clock=clock
    )
    backends[1].set_health("unhealthy")
    backends[1].set_health("healthy")  # back now: recovered_at = clock.now

    def share_of_b(picks: int = 2000) -> float:
        return sum(pool.pick().name == "b" for _ in range(picks)) / picks  # type: ignore[union-attr]

    assert share_of_b() < 0.02  # at t=0: almost nothing
    clock.now += 5
    assert 0.18 < share_of_b() < 0.32  # half-way: about half of its 50 %
    clock.now += 5
    assert 0.47 < share_of_b() < 0.53  # ramp done: its full share


# -- consistent_hash's ring: bounded, built off the request path (SPEC §2) ----------------------


def ring_of(pool: Pool) -> Ring:
    assert isinstance(pool.strategy, ConsistentHash) and pool.strategy.ring is not None
    return pool.strategy.ring


def builds(pool: Pool) -> int:
    assert isinstance(pool.strategy, ConsistentHash)
    return pool.strategy.builds


async def test_consistent_hash_heavy_weights_make_a_bounded_ring_built_before_any_pick(
    make_backend: MakeBackend,
) -> None:
    backends = tuple(make_backend(n, weight=1000) for n in ("app1", "app2", "app3"))
    pool = Pool(backends, ConsistentHash(random.Random(1)))
    assert builds(pool) == 1  # built by the pool, before the first request
    ring = ring_of(pool)
    assert len(ring.hashes) <= MAX_POINTS
    points = Counter(b.name for b in ring.owners)
    assert all(6000 <= n <= 6667 for n in points.values()), points  # in proportion to weight
    picks = Counter(pool.pick(key=b"user-%d" % i).name for i in range(3000))  # type: ignore[union-attr]
    assert all(800 < n < 1200 for n in picks.values()), picks
    for i in range(200):  # retries: every exclusion set walks the same ring
        first = pool.pick(key=b"user-%d" % i)
        assert pool.pick(exclude=[first], key=b"user-%d" % i) not in (first, None)  # type: ignore[list-item]
    assert builds(pool) == 1 and ring_of(pool) is ring


def test_vnodes_stay_within_the_bound_in_proportion_to_weight() -> None:
    assert vnodes([1, 2, 3]) == [VNODES, 2 * VNODES, 3 * VNODES]  # small weights: unscaled
    assert vnodes([1000, 1000, 1000]) == [6666, 6666, 6666]
    assert vnodes([1, 100_000]) == [1, 19_998]  # at least one point each
    assert sum(vnodes([7] * 5000)) <= MAX_POINTS
    assert min(vnodes([1, 1_000_000, 1_000_000])) == 1


async def test_consistent_hash_exclusion_walks_clockwise_to_a_stable_second_owner(
    make_backend: MakeBackend,
) -> None:
    backends = tuple(make_backend(n) for n in ("app1", "app2", "app3", "app4"))
    pool = Pool(backends, ConsistentHash(random.Random(1)))
    ring = ring_of(pool)
    for i in range(300):
        key = b"client-%d" % i
        first = pool.pick(key=key)
        assert first is not None
        second = pool.pick(exclude=[first], key=key)
        # The next point clockwise owned by another backend, found on the ring by hand.
        index = bisect.bisect_left(ring.hashes, ring_hash(key)) % len(ring.owners)
        while ring.owners[index] is first:
            index = (index + 1) % len(ring.owners)
        assert second is ring.owners[index]
        assert pool.pick(exclude=[first], key=key) is second  # stable, not random
        third = pool.pick(exclude=[first, second], key=key)  # type: ignore[list-item]
        assert third not in (first, second, None)
    assert builds(pool) == 1


async def test_consistent_hash_a_backend_going_down_moves_only_its_keys_without_a_build(
    make_backend: MakeBackend,
) -> None:
    backends = tuple(make_backend(n, weight=1000) for n in ("app1", "app2", "app3"))
    pool = Pool(backends, ConsistentHash(random.Random(1)))
    keys = [b"client-%d" % i for i in range(3000)]
    before = {k: pool.pick(key=k) for k in keys}
    second = {k: pool.pick(exclude=[before[k]], key=k) for k in keys}  # type: ignore[list-item]
    backends[2].set_health("unhealthy")  # the candidates change; the members do not
    after = {k: pool.pick(key=k) for k in keys}
    moved = [k for k in keys if after[k] is not before[k]]
    assert moved and all(before[k] is backends[2] for k in moved)  # only app3's keys move
    assert all(after[k] is second[k] for k in moved)  # ...each to its retry's second choice
    assert builds(pool) == 1


async def test_consistent_hash_reweight_and_new_members_rebuild_the_ring(
    make_backend: MakeBackend,
) -> None:
    a, b, c = (make_backend(n) for n in ("app1", "app2", "app3"))
    pool = Pool((a, b, c), ConsistentHash(random.Random(1)))
    assert builds(pool) == 1
    a.set_mode("disabled")
    a.set_mode("enabled")  # state changes: the same members and weights, no new ring
    assert builds(pool) == 1
    a.weight = 3
    a.refresh()  # a reweight: the pool rebuilds, so does the ring
    assert builds(pool) == 2
    assert Counter(o.name for o in ring_of(pool).owners) == {
        "app1": 3 * VNODES, "app2": VNODES, "app3": VNODES,
    }  # fmt: skip
    picks = Counter(pool.pick(key=b"k%d" % i).name for i in range(5000))  # type: ignore[union-attr]
    assert 2800 < picks["app1"] < 3200, picks
    strategy = pool.strategy
    assert isinstance(strategy, ConsistentHash)
    d = make_backend("app4")
    strategy.rebuild((a, b, c, d))  # new members
    assert strategy.builds == 3 and d in ring_of(pool).owners
    strategy.rebuild((a, b, c, d))
    assert strategy.builds == 3  # nothing changed: nothing built


async def test_a_swapped_in_consistent_hash_gets_its_ring_from_the_pool(
    make_backend: MakeBackend,
) -> None:
    backends = tuple(make_backend(n, weight=1000) for n in "abc")
    pool = Pool(backends, make_strategy("round_robin"))
    fresh = ConsistentHash(random.Random(1))
    pool.set_strategy(fresh)
    assert fresh.builds == 1 and fresh.ring is not None
    pool.pick(key=b"x")
    assert fresh.builds == 1
