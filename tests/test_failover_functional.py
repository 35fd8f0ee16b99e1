"""Under a steady stream of GETs through three backends, one is killed and later restarted:
clients see no failure, and the restarted backend is back in rotation."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from conftest import StartBalancer
from support import Backend, eventually, start_backend

CONFIG = """
retries: 2
health_check:
  interval: 300ms
  timeout: 300ms
  rise: 2
  fall: 2
circuit_breaker:
  failure_threshold: 3
  reset_timeout: 1s
"""


async def test_kill_and_restart_one_of_three_under_load(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    third = await start_backend("b2")
    everyone = [*backends, third]
    try:
        balancer = await balancer_factory([b.url for b in everyone], CONFIG)
        answered: Counter[str] = Counter()
        failures: list[str] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    async with session.get(balancer.url + "/") as response:
                        await response.read()
                        if response.status == 200:
                            answered[response.headers["X-Backend"]] += 1
                        else:
                            failures.append(str(response.status))
                except aiohttp.ClientError as exc:
                    failures.append(type(exc).__name__)

        clients = [asyncio.ensure_future(client()) for _ in range(4)]
        try:
            await eventually(lambda: answered["b1"] > 20)
            port = everyone[1].port
            await everyone[1].stop()  # killed: its connections reset, its port refuses

            async def b1_out() -> bool:
                async with session.get(balancer.admin_url + "/status") as response:
                    b1 = (await response.json())["backends"][1]
                return b1["breaker"] != "closed" or b1["state"] == "unhealthy"

            await eventually(b1_out, timeout=5)
            before = answered["b1"]
            await eventually(lambda: answered["b0"] > 200 and answered["b2"] > 200, timeout=10)
            assert answered["b1"] == before  # out of rotation while dead
            everyone[1] = await start_backend("b1", port)
            back = answered["b1"]
            await eventually(lambda: answered["b1"] > back + 20, timeout=10)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        assert failures == []
    finally:
        await third.stop()
        await everyone[1].stop()
