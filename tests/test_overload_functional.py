"""Protecting backends: backup backends, per-backend max_connections with a bounded queue."""

from __future__ import annotations

import asyncio

import aiohttp

from conftest import StartBalancer
from support import Backend, eventually


async def test_backup_takes_traffic_only_when_no_primary_can(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    config = (
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nbackends:\n"
        f"  - url: {backends[0].url}\n    name: primary\n"
        f"  - url: {backends[1].url}\n    name: spare\n    backup: true\n"
    )
    balancer = await balancer_factory([], config=config)
    for _ in range(4):
        async with session.get(balancer.url + "/") as response:
            assert response.headers["X-Backend"] == "b0"
    await session.post(balancer.admin_url + "/backends/primary/disable")
    for _ in range(2):
        async with session.get(balancer.url + "/") as response:
            assert response.headers["X-Backend"] == "b1"
    await session.post(balancer.admin_url + "/backends/primary/enable")
    async with session.get(balancer.url + "/") as response:
        assert response.headers["X-Backend"] == "b0"


def capped(backend: Backend, queue: str) -> str:
    return (
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\nhealth_check: {interval: 1h}\n"
        f"backends:\n  - url: {backend.url}\n    max_connections: 2\n{queue}"
    )


async def test_requests_past_max_connections_wait_in_the_queue(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory(
        [], config=capped(backends[0], "queue: {size: 10, timeout: 5s}\n")
    )
    requests = [
        asyncio.ensure_future(session.get(balancer.url + "/slow?delay=0.5")) for _ in range(5)
    ]
    # Never more than two at the backend at once.
    await eventually(lambda: len(backends[0].seen) == 2)
    status = await (await session.get(balancer.admin_url + "/status")).json()
    assert status["backends"][0]["in_flight"] == 2
    responses = await asyncio.gather(*requests)
    assert [r.status for r in responses] == [200] * 5
    assert len(backends[0].seen) == 5


async def test_queue_timeout_and_a_full_queue_answer_503(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory(
        [], config=capped(backends[0], "queue: {size: 1, timeout: 300ms}\n")
    )
    busy = [asyncio.ensure_future(session.get(balancer.url + "/slow?delay=2")) for _ in range(2)]
    await eventually(lambda: len(backends[0].seen) == 2)
    waiting = asyncio.ensure_future(session.get(balancer.url + "/"))  # queued, times out

    async def queued() -> bool:
        return (await (await session.get(balancer.admin_url + "/status")).json())["queued"] == 1

    await eventually(queued)  # it took the one place in the queue
    async with session.get(balancer.url + "/") as response:  # the queue is full: at once
        assert response.status == 503
    response = await waiting
    assert response.status == 503
    assert "Retry-After" in response.headers
    assert [r.status for r in await asyncio.gather(*busy)] == [200, 200]
