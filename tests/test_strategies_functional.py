"""Strategies through the real balancer, with real fast and slow backends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, start_backend

ROOT = Path(__file__).resolve().parent.parent


async def shares(
    session: aiohttp.ClientSession,
    balancer: Balancer,
    total: int,
    concurrency: int = 4,
    headers: dict[str, str] | None = None,
) -> Counter[str]:
    served: Counter[str] = Counter()
    remaining = iter(range(total))

    async def client() -> None:
        for _ in remaining:
            async with session.get(balancer.url + "/", headers=headers) as response:
                assert response.status == 200
                served[response.headers["X-Backend"]] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return served


@pytest.mark.parametrize("strategy", ["response_time", "adaptive", "p2c", "least_connections"])
async def test_load_aware_strategies_send_less_to_a_slow_backend(
    strategy: str,
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
) -> None:
    backends[1].set_delay(0.05)  # b1 is slow
    balancer = await balancer_factory([b.url for b in backends], f"strategy: {strategy}\n")
    served = await shares(session, balancer, 200)
    assert served["b0"] > 2 * served["b1"], served


async def test_round_robin_splits_evenly_whatever_the_speed(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    backends[1].set_delay(0.02)
    balancer = await balancer_factory([b.url for b in backends])
    served = await shares(session, balancer, 100, concurrency=1)
    assert served == {"b0": 50, "b1": 50}


async def test_weighted_from_yaml(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    config = (
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nstrategy: weighted\nbackends:\n"
        f"  - url: {backends[0].url}\n    weight: 3\n  - url: {backends[1].url}\n"
    )
    balancer = await balancer_factory([], config=config)
    assert await shares(session, balancer, 80, concurrency=1) == {"b0": 60, "b1": 20}


async def test_consistent_hash_on_a_header_keeps_each_user_on_one_backend(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    config = "strategy: consistent_hash\nhash:\n  on: header\n  name: X-User\n"
    balancer = await balancer_factory([b.url for b in backends], config)
    owners = {}
    for user in range(40):
        served = await shares(session, balancer, 5, concurrency=1, headers={"X-User": f"u{user}"})
        assert len(served) == 1, served  # always the same backend for one user
        owners[user] = next(iter(served))
    assert set(owners.values()) == {"b0", "b1"}  # users spread over both


async def test_consistent_hash_with_heavy_weights_answers_from_one_ring_built_at_start(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    """SPEC §2: weights of 1,000 make one bounded ring, built at start, never per request,
    not for a retry that walks past a backend that is down either."""
    third = await start_backend("b2")
    try:
        urls = [b.url for b in backends] + [third.url]
        lines = "".join(
            f"  - url: {url}\n    name: b{i}\n    weight: 1000\n" for i, url in enumerate(urls)
        )
        config = (
            "listen: 127.0.0.1:0\nlog_level: debug\nadmin: {listen: 127.0.0.1:0}\n"
            "strategy: consistent_hash\nhash: {on: header, name: X-User}\n"
            f"health_check: {{interval: 1h}}\nbackends:\n{lines}"
        )
        balancer = await balancer_factory([], config=config)
        owners = {}
        for user in range(30):
            served = await shares(
                session, balancer, 2, concurrency=1, headers={"X-User": f"u{user}"}
            )
            assert len(served) == 1, served
            owners[user] = next(iter(served))
        assert set(owners.values()) == {"b0", "b1", "b2"}
        await third.stop()  # its users' requests are refused, then retried on their next owner
        for user, owner in owners.items():
            headers = {"X-User": f"u{user}"}
            served = await shares(session, balancer, 2, concurrency=1, headers=headers)
            if owner == "b2":
                assert len(served) == 1 and "b2" not in served, served  # one stable next owner
            else:
                assert served == {owner: 2}, served  # nobody else's users move
        log = balancer.stderr()
        assert log.count("consistent_hash: ring of 19998 points over 3 backends built") == 1, log
    finally:
        await third.stop()


async def open_loop(
    session: aiohttp.ClientSession, url: str, seconds: float, interval: float = 0.01
) -> list[str]:
    """One request every `interval` for `seconds`, each sent on time whatever the ones before
    it are doing (an open loop); the backend that served each, in the order they were sent."""
    loop = asyncio.get_running_loop()

    async def get() -> str:
        async with session.get(url) as response:
            assert response.status == 200
            await response.read()
            return response.headers["X-Backend"]

    tasks = []
    start = loop.time()
    for i in range(round(seconds / interval)):
        await asyncio.sleep(max(0.0, start + i * interval - loop.time()))
        tasks.append(asyncio.ensure_future(get()))
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("strategy", ["response_time", "p2c", "adaptive"])
async def test_a_backend_turning_slow_loses_its_traffic_before_its_first_slow_answer(
    strategy: str, balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    """Three backends at 20 ms under 100 requests a second; b2 turns to 2 s. Every request of
    the next second is sent before b2's first slow answer can come back: only the age of its
    requests waiting can tell the strategy. Before, their EWMA read b2 as the fastest (no new
    sample: decayed) and sent it dozens of them."""
    started = [await start_backend(f"b{i}") for i in range(3)]
    try:
        for backend in started:
            backend.set_delay(0.02)
        balancer = await balancer_factory(
            [b.url for b in started], f"strategy: {strategy}\nhealth_check: {{interval: 1h}}\n"
        )
        url = balancer.url + "/"
        before = Counter(await open_loop(session, url, 1.0))
        assert set(before) == {"b0", "b1", "b2"}, before  # b2 was taking its part
        started[2].set_delay(2.0)
        after = await open_loop(session, url, 1.0)
        assert len(after) == 100
        assert after.count("b2") <= 8, Counter(after)
    finally:
        for backend in started:
            await backend.stop()


def test_check_refuses_hostile_adaptive_settings(tmp_path: Path) -> None:
    """`balancer --check`: each bad adaptive key on its own line, exit 2; a good one passes."""
    head = "listen: 127.0.0.1:0\nbackends:\n  - url: http://127.0.0.1:9001\n"
    bad = head + "adaptive:\n  capacity: 0\n  weights: {connections: -1, cpu: .inf}\n  max: 3\n"
    path = tmp_path / "balancer.yaml"
    path.write_text(bad)
    done = subprocess.run(
        [sys.executable, "-m", "balancer", "--check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert f"{path}:5: adaptive.capacity: must be at least 1, got 0" in lines, lines
    assert f"{path}:6: adaptive.weights.connections: must be >= 0, got -1" in lines, lines
    assert f"{path}:6: adaptive.weights.cpu: must be >= 0, got inf" in lines, lines
    assert any(line.startswith(f"{path}:7: adaptive: unknown key 'max'") for line in lines), lines
    path.write_text(head + "strategy: adaptive\nadaptive: {capacity: 16}\n")
    done = subprocess.run(
        [sys.executable, "-m", "balancer", "--check", "-c", str(path)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done
