"""The traffic window (window.py): figures from two samples of the counters, and /series
through the real command, one process and two workers."""

from __future__ import annotations

import aiohttp
import pytest

from balancer.backend import DURATION_BUCKETS, RequestStats
from balancer.window import ALL, Sampler, Snapshot, Totals, figures, summed, with_all

from conftest import StartBalancer
from support import Backend, eventually


def stats(*answers: tuple[int, float]) -> Totals:
    recorded = RequestStats()
    for status, seconds in answers:
        recorded.record(status, seconds)
    return Totals.of(recorded)


def test_figures_are_the_difference_of_two_samples() -> None:
    older = stats((200, 0.001), (500, 0.001))
    newer = stats((200, 0.001), (500, 0.001), *[(200, 0.02)] * 8, (502, 3.0), (503, 0.02))
    window = figures(older, newer, 5.0)
    assert (window.requests, window.errors, window.rate) == (10, 2, 2.0)
    assert window.error_ratio == 0.2
    p50 = window.quantile(0.5)
    assert p50 is not None and 0.01 < p50 <= 0.025  # inside the 10-25 ms bucket
    p99 = window.quantile(0.99)
    assert p99 is not None and 2.5 < p99 <= 5.0  # the one slow answer's bucket
    assert figures(newer, newer, 5.0).quantile(0.5) is None  # no requests: no latency


def test_a_counter_that_went_down_reads_as_nothing_never_negative() -> None:
    """A worker restarted (its counters from zero) or a backend removed and re-added."""
    window = figures(stats(*[(500, 0.1)] * 5), stats((200, 0.1)), 2.0)
    assert (window.requests, window.errors) == (0, 0)
    assert all(n >= 0 for n in window.buckets)


def test_totals_from_a_worker_are_checked() -> None:
    good = stats((200, 0.1)).as_json()
    assert Totals.from_json(good) == stats((200, 0.1))
    empty = [0] * (len(DURATION_BUCKETS) + 1)
    bad = [
        None,
        [],
        {"codes": {}},
        {"codes": {}, "buckets": [1, 2]},
        {**good, "buckets": [-1] * len(empty)},
        {"codes": {"x": 1}, "buckets": empty},
    ]
    for body in bad:
        with pytest.raises(ValueError):
            Totals.from_json(body)
    odd = Totals.from_json({"codes": {"200": 3, "500": -4, "502": "many"}, "buckets": empty})
    assert odd.codes == {200: 3}  # counts that cannot be are dropped


async def test_the_sampler_keeps_a_bounded_history_and_answers_any_window() -> None:
    now = [1000.0]
    counts = {"n": 0}

    async def read() -> Snapshot:
        counts["n"] += 10
        return {"b0": stats(*[(200, 0.01)] * counts["n"])}

    sampler = Sampler(read, interval=2.0, history=10.0, clock=lambda: now[0])
    for _ in range(20):
        await sampler.sample()
        now[0] += 2.0
    assert len(sampler.samples) == 6  # 10 s of history at 2 s, and the newest
    window = sampler.over(4.0)
    assert window["b0"].requests == 20  # two samples later: 10 more each
    assert window[ALL].requests == window["b0"].requests
    assert sampler.over(60.0)["b0"].seconds == 10.0  # as much as was kept
    series = sampler.series()
    assert len(series["times"]) == 5 and len(series["backends"]["b0"]) == 5


async def test_a_read_that_fails_leaves_a_gap_and_sampling_goes_on() -> None:
    calls = {"n": 0}

    async def read() -> Snapshot:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("no worker answered")
        return {"b0": Totals()}

    sampler = Sampler(read)
    for _ in range(3):
        await sampler.sample()
    assert len(sampler.samples) == 2


def test_snapshots_of_workers_add_up() -> None:
    one, two = {"b0": stats((200, 0.1))}, {"b0": stats((500, 0.1)), "b1": stats((200, 1.0))}
    total = with_all(summed([one, two]))
    assert total["b0"].codes == {200: 1, 500: 1}
    assert sum(total[ALL].codes.values()) == 3


@pytest.mark.parametrize("extra", ["", "workers: 2\n"], ids=["one process", "two workers"])
async def test_series_shows_the_traffic_of_the_whole_balancer(
    backends: list[Backend], balancer_factory: StartBalancer, extra: str
) -> None:
    balancer = await balancer_factory([b.url for b in backends], extra)

    async def traffic_seen() -> bool:
        async with aiohttp.ClientSession() as client:
            for _ in range(10):
                async with client.get(balancer.url + "/", headers={"Connection": "close"}) as r:
                    assert r.status == 200
            async with client.get(balancer.admin_url + "/series") as response:
                body = await response.json()
        points = [p for p in body.get("backends", {}).get(ALL, []) if p and p["rate"] > 0]
        return bool(points) and points[-1]["p50_ms"] is not None

    await eventually(traffic_seen, timeout=15)
