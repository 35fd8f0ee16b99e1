"""Sticky sessions against hostile clients and a Redis that restarts empty (SPEC §2, issue 13),
through the real balancer, real backends and a real redis-server."""

from __future__ import annotations

import asyncio

import aiohttp
import redis.asyncio as aioredis
from test_sticky_functional import get, status

from conftest import StartBalancer
from support import Backend, RedisServer


def with_redis(sticky: str, server: RedisServer, extra: str = "") -> str:
    return sticky + f"redis:\n  url: {server.url}\n{extra}"


async def test_redis_timeout_is_the_bound_of_each_call(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    header = "sticky:\n  mode: header\n"
    patient = await balancer_factory(urls, with_redis(header, redis_server, "  timeout: 5s\n"))
    default = await balancer_factory(urls, with_redis(header, redis_server))  # 50ms
    for balancer in (patient, default):
        await get(session, balancer.url + "/", headers={"X-Session-Id": "warm"})
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.execute_command("CLIENT", "PAUSE", 700, "ALL")  # Redis stalls 0.7 s
        await asyncio.gather(
            get(session, patient.url + "/", headers={"X-Session-Id": "patient"}),
            get(session, default.url + "/", headers={"X-Session-Id": "hasty"}),
        )
        assert (await status(session, patient))["sticky"]["available"] is True
        assert await client.exists("balancer:sticky:header:patient") == 1  # it waited
        assert await client.exists("balancer:sticky:header:hasty") == 0  # it gave up
        assert "unavailable" in default.stderr() and "unavailable" not in patient.stderr()
    finally:
        await client.aclose()
