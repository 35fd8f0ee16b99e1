"""Sticky sessions against hostile clients and a Redis that restarts empty (SPEC §2, issue 13),
through the real balancer, real backends and a real redis-server."""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from test_sticky_functional import COOKIE, get, lb_cookie, status

from conftest import StartBalancer
from support import Backend, RedisServer, eventually, raw_exchange

SECRET_KEY = b"balancer:sticky-secret"


def with_redis(sticky: str, server: RedisServer, extra: str = "") -> str:
    return sticky + f"redis:\n  url: {server.url}\n{extra}"


def fresh_cookie(response: aiohttp.ClientResponse, sent: str) -> str:
    value = lb_cookie(response)  # exactly one new lb_session line
    assert value != sent
    return value


async def test_forged_cookies_get_a_fresh_cookie_and_never_reach_redis(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    balancer = await balancer_factory(urls, with_redis(COOKIE, redis_server))
    other = await balancer_factory(urls, COOKIE + "  secret: another-secret\n")
    _, response = await get(session, balancer.url + "/")
    genuine = lb_cookie(response)
    _, response = await get(session, other.url + "/")
    foreign = lb_cookie(response)  # well formed and signed, by another secret
    cookie_id, mac = genuine.split(".")
    forged = [
        secrets.token_urlsafe(18),  # random, as cookies were before signing
        f"{cookie_id}.{'B' if mac[0] == 'A' else 'A'}{mac[1:]}",  # our shape, a bad MAC
        f"{secrets.token_urlsafe(18)}.{mac}",  # our MAC, another id
        foreign,
        "x" * 4096,  # oversized
    ]
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        before = await client.dbsize()  # the secret and the genuine session
        assert before == 2
        for value in forged:
            name, response = await get(
                session, balancer.url + "/", headers={"Cookie": f"lb_session={value}"}
            )
            fresh = fresh_cookie(response, value)  # treated as absent: a new client
            again, _ = await get(
                session, balancer.url + "/", headers={"Cookie": f"lb_session={fresh}"}
            )
            assert again == name
        keys = [key.decode() for key in await client.keys("*")]
        assert await client.dbsize() == before + len(forged)  # the fresh ids, none of theirs
        assert not [key for key in keys for value in forged if value in key]
        assert all(len(key) <= len("balancer:sticky:cookie:") + 47 for key in keys)
    finally:
        await client.aclose()
    seen = [s for b in backends for s in b.seen]
    assert all("lb_session" not in ";".join(s.header("Cookie")) for s in seen)


async def test_repeated_cookie_fields_honour_only_a_value_we_signed(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    balancer = await balancer_factory([b.url for b in backends], with_redis(COOKIE, redis_server))
    owner, response = await get(session, balancer.url + "/")
    genuine = lb_cookie(response)
    one, two = secrets.token_urlsafe(18), "y" * 2048
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        before = await client.dbsize()
        _, response = await get(
            session, balancer.url + "/", headers={"Cookie": f"lb_session={one}; lb_session={two}"}
        )
        fresh_cookie(response, one)
        for cookies in (
            [f"lb_session={one}", f"a=1; lb_session={genuine}"],  # two Cookie fields
            [f"lb_session={two}; lb_session={genuine}; b=2"],
            [f"lb_session={genuine}; lb_session={one}"],
        ):
            head = "".join(f"Cookie: {line}\r\n" for line in cookies)
            answer = await raw_exchange(
                balancer.host_port, f"GET / HTTP/1.1\r\nHost: a\r\n{head}\r\n".encode()
            )
            assert answer.status == 200 and answer.header("X-Backend") == [owner]
            assert not [c for c in answer.header("Set-Cookie") if c.startswith("lb_session=")]
        assert await client.dbsize() == before + 1  # only the fresh cookie's mapping
        keys = b" ".join(await client.keys("*")).decode()
        assert one not in keys and two not in keys
    finally:
        await client.aclose()
    seen = [s for b in backends for s in b.seen]
    assert all("lb_session" not in ";".join(s.header("Cookie")) for s in seen)


async def test_header_keys_over_256_bytes_are_neither_stored_nor_looked_up(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    header = "sticky:\n  mode: header\n"
    balancer = await balancer_factory(urls, with_redis(header, redis_server))
    in_process = await balancer_factory(urls, header)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        longest = "u" * 256
        names = {
            (await get(session, balancer.url + "/", headers={"X-Session-Id": longest}))[0]
            for _ in range(4)
        }
        assert len(names) == 1 and await client.dbsize() == 1  # 256 bytes: still a key
        for i in range(300):  # many distinct oversized keys
            value = f"{i:04d}" + "k" * (253 + i * 13)
            await get(session, balancer.url + "/", headers={"X-Session-Id": value})
        wide = "é" * 129  # 129 characters, 258 bytes of UTF-8
        answer = await raw_exchange(
            balancer.host_port,
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Session-Id: " + wide.encode() + b"\r\n\r\n",
        )
        assert answer.status == 200
        assert await client.dbsize() == 1
        for target in (balancer, in_process):  # not looked up: the strategy picks each time
            seen = {
                (await get(session, target.url + "/", headers={"X-Session-Id": "k" * 4096}))[0]
                for _ in range(4)
            }
            assert seen == {"b0", "b1"}
    finally:
        await client.aclose()


async def _long_sid_app() -> tuple[web.AppRunner, str]:
    """A real backend whose session cookie is longer than a key may be."""

    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="ok\n", headers={"X-Backend": "long"})
        response.headers.add("Set-Cookie", "sid=" + "s" * 300 + "; Path=/")
        return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/login", login)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_learn_mode_stores_no_cookie_over_256_bytes(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    learn = "sticky:\n  mode: learn\n  cookie: sid\n"
    runner, long_url = await _long_sid_app()
    try:
        urls = [b.url for b in backends]
        balancer = await balancer_factory(urls, with_redis(learn, redis_server))
        alone = await balancer_factory([long_url], with_redis(learn, redis_server))
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            await get(session, balancer.url + "/", headers={"Cookie": "sid=" + "c" * 300})
            async with session.post(alone.url + "/login") as response:
                assert response.status == 200  # its 300-byte sid is learned by no one
            assert await client.dbsize() == 0
            async with session.post(balancer.url + "/login") as response:
                assert response.status == 200  # a short sid is still learned
            assert await client.dbsize() == 1
        finally:
            await client.aclose()
    finally:
        await runner.cleanup()


async def test_instances_without_a_secret_share_one_through_redis(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    one = await balancer_factory(urls, with_redis(COOKIE, redis_server))
    two = await balancer_factory(urls, with_redis(COOKIE, redis_server))
    elsewhere = await balancer_factory(urls, COOKIE)  # in-process: a secret of its own
    for issuer, honourer in ((one, two), (two, one)):
        for _ in range(3):
            owner, response = await get(session, issuer.url + "/")
            cookie = lb_cookie(response)
            name, again = await get(
                session, honourer.url + "/", headers={"Cookie": f"lb_session={cookie}"}
            )
            assert name == owner
            assert "lb_session" not in again.headers.get("Set-Cookie", "")
            _, response = await get(
                session, elsewhere.url + "/", headers={"Cookie": f"lb_session={cookie}"}
            )
            fresh_cookie(response, cookie)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        secret = await client.get(SECRET_KEY)
        assert secret and len(secret) >= 32 and await client.ttl(SECRET_KEY) == -1
    finally:
        await client.aclose()


async def test_a_configured_secret_signs_on_every_instance(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    signed = COOKIE + "  secret: ${LB_SECRET}\n"
    env = {"LB_SECRET": "correct horse battery staple"}
    one = await balancer_factory(urls, with_redis(signed, redis_server), env=env)
    two = await balancer_factory(urls, signed, env=env)  # another store, the same secret
    three = await balancer_factory(urls, signed, env={"LB_SECRET": "another"})
    _, response = await get(session, one.url + "/")
    cookie = {"Cookie": f"lb_session={lb_cookie(response)}"}
    _, again = await get(session, two.url + "/", headers=cookie)
    assert "lb_session" not in again.headers.get("Set-Cookie", "")  # honoured: ours
    _, response = await get(session, three.url + "/", headers=cookie)
    fresh_cookie(response, cookie["Cookie"].split("=", 1)[1])
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await client.exists(SECRET_KEY) == 0  # nothing to share: it is configured
    finally:
        await client.aclose()


async def test_a_redis_restarted_empty_repins_no_session_the_process_knows(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    config = with_redis(COOKIE, redis_server)
    balancer = await balancer_factory(urls, config)
    await session.post(f"{balancer.admin_url}/backends/b1/drain")
    cookies = []
    for _ in range(20):  # every session on b0
        name, response = await get(session, balancer.url + "/")
        assert name == "b0"
        cookies.append({"Cookie": f"lb_session={lb_cookie(response)}"})
    await session.post(f"{balancer.admin_url}/backends/b1/enable")
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        secret = await client.get(SECRET_KEY)
        await client.aclose()
        redis_server.kill()
        redis_server.start()  # empty
        client = aioredis.Redis.from_url(redis_server.url)
        repinned: list[str] = []

        async def all_back_in_redis() -> bool:
            # Round robin would now send every other new pick to b1: a session answered
            # from anywhere but b0 was re-pinned.
            for cookie in cookies:
                name, _ = await get(session, balancer.url + "/", headers=cookie)
                if name != "b0":
                    repinned.append(name)
            assert repinned == [], f"{len(repinned)} re-pinned of {len(cookies)}"
            return len(await client.keys("balancer:sticky:cookie:*")) == len(cookies)

        await eventually(all_back_in_redis, timeout=15)
        assert await client.get(SECRET_KEY) == secret  # written back with the mappings
        later = await balancer_factory(urls, config)  # so a new instance signs alike
        for cookie in cookies:
            name, response = await get(session, later.url + "/", headers=cookie)
            assert name == "b0" and "lb_session" not in response.headers.get("Set-Cookie", "")
    finally:
        await client.aclose()


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


async def test_the_shared_secret_is_written_back_to_a_redis_restarted_empty(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    urls = [b.url for b in backends]
    config = with_redis(COOKIE, redis_server)
    balancer = await balancer_factory(urls, config)
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        secret = await client.get(SECRET_KEY)
        assert secret
        await client.aclose()
        redis_server.kill()  # while the balancer sends Redis nothing: it cannot notice
        redis_server.start()
        client = aioredis.Redis.from_url(redis_server.url)

        async def restored() -> bool:
            return await client.get(SECRET_KEY) == secret

        await eventually(restored, timeout=5)
        _, response = await get(session, balancer.url + "/")
        cookie = {"Cookie": f"lb_session={lb_cookie(response)}"}
        later = await balancer_factory(urls, config)  # loads the same secret
        _, again = await get(session, later.url + "/", headers=cookie)
        assert "lb_session" not in again.headers.get("Set-Cookie", "")
    finally:
        await client.aclose()
