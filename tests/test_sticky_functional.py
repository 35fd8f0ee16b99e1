"""Sticky sessions through the real balancer: every mode, re-pinning, drain, and Redis shared
by two instances, killed and restarted mid-traffic."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from conftest import StartBalancer
from support import Backend, Balancer, RedisServer, eventually, raw_exchange

COOKIE = "sticky:\n  mode: cookie\n"


async def get(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[str, aiohttp.ClientResponse]:
    async with session.get(url, **kwargs) as response:
        await response.read()
        assert response.status == 200
        return response.headers["X-Backend"], response


def lb_cookie(response: aiohttp.ClientResponse) -> str:
    lines = [v for v in response.headers.getall("Set-Cookie", []) if v.startswith("lb_session=")]
    assert len(lines) == 1, lines
    return lines[0].split(";")[0].split("=", 1)[1]


async def status(session: aiohttp.ClientSession, balancer: Balancer) -> Any:
    async with session.get(balancer.admin_url + "/status") as response:
        return await response.json()


async def test_cookie_mode_issues_a_cookie_and_keeps_the_client_on_its_backend(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], COOKIE)
    first, response = await get(session, balancer.url + "/")
    attributes = response.headers["Set-Cookie"]
    assert "HttpOnly" in attributes and "SameSite=Lax" in attributes and "Path=/" in attributes
    assert "Secure" not in attributes
    value = lb_cookie(response)
    assert len(value) >= 24  # 144 random bits
    for _ in range(8):
        name, again = await get(
            session, balancer.url + "/", headers={"Cookie": f"a=1; lb_session={value}; b=2"}
        )
        assert name == first
        assert "lb_session" not in again.headers.get("Set-Cookie", "")  # issued once
    seen = [s for b in backends for s in b.seen]
    assert all("lb_session" not in ";".join(s.header("Cookie")) for s in seen)
    assert [s.header("Cookie") for s in seen[1:]] == [["a=1; b=2"]] * 8
    _, secure = await get(session, balancer.url + "/", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in secure.headers["Set-Cookie"]


async def test_own_cookie_is_one_more_set_cookie_line(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], COOKIE)
    response = await raw_exchange(balancer.host_port, b"GET /cookies HTTP/1.1\r\nHost: a\r\n\r\n")
    cookies = response.header("Set-Cookie")
    assert cookies[:2] == ["a=1; Path=/", "b=2; Path=/"] and cookies[2].startswith("lb_session=")


async def test_header_and_ip_modes(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    by_header = await balancer_factory([b.url for b in backends], "sticky:\n  mode: header\n")
    for user in ("alice", "bob", "carol"):
        names = {
            (await get(session, by_header.url + "/", headers={"X-Session-Id": user}))[0]
            for _ in range(5)
        }
        assert len(names) == 1
    by_ip = await balancer_factory([b.url for b in backends], "sticky:\n  mode: ip\n")
    names = {
        (await get(session, by_ip.url + "/", headers={"X-Forwarded-For": f"10.0.0.{i}"}))[0]
        for i in range(6)
    }
    assert len(names) == 1  # the peer address, whatever X-Forwarded-For claims


async def test_learn_mode_follows_the_apps_own_session_cookie(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory(
        [b.url for b in backends], "sticky:\n  mode: learn\n  cookie: sid\n"
    )
    async with session.post(balancer.url + "/login") as response:
        owner = response.headers["X-Backend"]
        sid = next(v for v in response.headers.getall("Set-Cookie") if v.startswith("sid=")).split(
            ";"
        )[0]
        assert "lb_session" not in ";".join(response.headers.getall("Set-Cookie"))
    for _ in range(6):
        name, _ = await get(session, balancer.url + "/", headers={"Cookie": sid})
        assert name == owner


async def test_repinned_when_the_backend_is_disabled_and_draining_keeps_its_clients(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], COOKIE)
    first, response = await get(session, balancer.url + "/")
    cookie = {"Cookie": f"lb_session={lb_cookie(response)}"}
    other = "b1" if first == "b0" else "b0"
    await session.post(f"{balancer.admin_url}/backends/{first}/drain")
    assert (await get(session, balancer.url + "/", headers=cookie))[0] == first  # kept
    assert {(await get(session, balancer.url + "/"))[0] for _ in range(4)} == {other}  # new ones
    await session.post(f"{balancer.admin_url}/backends/{first}/disable")
    assert (await get(session, balancer.url + "/", headers=cookie))[0] == other  # re-pinned
    await session.post(f"{balancer.admin_url}/backends/{first}/enable")
    assert (await get(session, balancer.url + "/", headers=cookie))[0] == other  # it stays


async def test_two_instances_share_sessions_through_redis_and_survive_its_outage(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    config = COOKIE + f"redis:\n  url: {redis_server.url}\n"
    one = await balancer_factory([b.url for b in backends], config)
    two = await balancer_factory([b.url for b in backends], config)
    assert (await status(session, one))["sticky"] == {
        "mode": "cookie",
        "store": "redis",
        "available": True,
    }
    clients = []
    for _ in range(6):
        name, response = await get(session, one.url + "/")
        clients.append((name, {"Cookie": f"lb_session={lb_cookie(response)}"}))
    for owner, cookie in clients:  # the other instance honours them on the very next request
        assert (await get(session, two.url + "/", headers=cookie))[0] == owner

    failures: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        while not stop.is_set():
            for _, cookie in clients:
                try:
                    async with session.get(two.url + "/", headers=cookie) as response:
                        await response.read()
                        if response.status != 200:
                            failures.append(str(response.status))
                except aiohttp.ClientError as exc:
                    failures.append(type(exc).__name__)

    running = asyncio.ensure_future(traffic())
    try:
        redis_server.kill()

        async def unavailable() -> bool:
            return (await status(session, two))["sticky"]["available"] is False

        await eventually(unavailable, timeout=5)
        metrics = await (await session.get(two.admin_url + "/metrics")).text()
        assert 'balancer_sticky_store_available{store="redis"} 0.0' in metrics
        redis_server.start()

        async def available() -> bool:
            return (await status(session, two))["sticky"]["available"] is True

        await eventually(available, timeout=10)
    finally:
        stop.set()
        await running
    assert failures == []
    assert "unavailable" in two.stderr() and "is back" in two.stderr()

    # Sharing again: a session made on one instance now is honoured by the other.
    await eventually(lambda: _available(session, one), timeout=10)
    name, response = await get(session, one.url + "/")
    cookie = {"Cookie": f"lb_session={lb_cookie(response)}"}
    assert (await get(session, two.url + "/", headers=cookie))[0] == name


async def _available(session: aiohttp.ClientSession, balancer: Balancer) -> bool:
    return bool((await status(session, balancer))["sticky"]["available"])


async def test_mappings_expire_after_the_ttl_in_redis(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    config = "sticky:\n  mode: header\n  ttl: 1s\n" + f"redis:\n  url: {redis_server.url}\n"
    balancer = await balancer_factory([b.url for b in backends], config)
    await get(session, balancer.url + "/", headers={"X-Session-Id": "u1"})
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        keys = await client.keys("balancer:sticky:*")
        assert keys == [b"balancer:sticky:header:u1"]
        assert 0 < await client.pttl(keys[0]) <= 1000
        await eventually(
            lambda: client.exists(keys[0]) == 0 if False else _gone(client, keys[0]), timeout=3
        )
    finally:
        await client.aclose()


async def _gone(client: aioredis.Redis, key: bytes) -> bool:
    return await client.exists(key) == 0


async def test_redis_down_at_start_is_retried_in_the_background(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    redis_server.kill()
    config = COOKIE + f"redis:\n  url: {redis_server.url}\n"
    balancer = await balancer_factory([b.url for b in backends], config)
    assert (await status(session, balancer))["sticky"]["available"] is False
    first, response = await get(session, balancer.url + "/")  # served from the process store
    cookie = {"Cookie": f"lb_session={lb_cookie(response)}"}
    assert (await get(session, balancer.url + "/", headers=cookie))[0] == first
    redis_server.start()
    await eventually(lambda: _available(session, balancer), timeout=10)
