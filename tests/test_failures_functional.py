"""SPEC §4's answers when backends fail: 502, 503 + Retry-After, 504, and the retry rule."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from test_proxy_functional import closed_port_url

from conftest import StartBalancer
from support import Backend, raw_exchange, start_raw_backend


async def test_no_routable_backend_is_503_with_retry_after_at_once(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    config = (
        f"listen: 127.0.0.1:0\nadmin: {{listen: 127.0.0.1:0}}\n"
        f"backends:\n  - url: {backends[0].url}\n    weight: 0\n"
    )
    balancer = await balancer_factory([backends[0].url], "", config=config)
    started = time.monotonic()
    async with session.get(balancer.url + "/") as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 1.0
    assert backends[0].seen == []


async def test_refused_connection_is_retried_on_another_backend_whatever_the_method(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([closed_port_url(), backends[0].url])
    for _ in range(4):
        async with session.post(balancer.url + "/sink", data=b"abc") as response:
            assert response.status == 200
            assert await response.text() == "3"
    assert len(backends[0].seen) == 4


async def test_all_backends_refusing_is_502(
    balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([closed_port_url(), closed_port_url()])
    async with session.get(balancer.url + "/") as response:
        assert response.status == 502


async def test_dropped_connection_retries_idempotent_only(
    backends: list[Backend], balancer: object, session: aiohttp.ClientSession
) -> None:
    url = balancer.url  # type: ignore[attr-defined]
    async with session.get(url + "/drop") as response:
        assert response.status == 502
    # GET, no body: tried on b0, then once more on b1 (retries: 1).
    assert [len(b.seen) for b in backends] == [1, 1]
    async with session.post(url + "/drop", data=b"payload") as response:
        assert response.status == 502
    # POST with a body that went out: never retried.
    assert sum(len(b.seen) for b in backends) == 3


async def test_slow_backend_is_504_and_not_retried(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "timeouts:\n  read: 300ms\n")
    started = time.monotonic()
    async with session.get(balancer.url + "/slow?delay=3") as response:
        assert response.status == 504
    assert time.monotonic() - started < 2.0
    assert [len(b.seen) for b in backends] == [1, 0]


async def test_failures_show_in_status(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([closed_port_url(), backends[0].url])
    async with session.get(balancer.url + "/") as response:
        assert response.status == 200
    status = await (await session.get(balancer.admin_url + "/status")).json()
    dead, alive = status["backends"]
    # The dead backend was tried (an attempt, a failure); the live one answered.
    assert (dead["failures_total"], dead["attempts_total"], dead["requests_total"]) == (1, 1, 0)
    assert (alive["failures_total"], alive["attempts_total"], alive["requests_total"]) == (0, 1, 1)
    assert dead["in_flight"] == alive["in_flight"] == 0


async def test_backend_dying_mid_body_cuts_the_client_connection(
    balancer_factory: StartBalancer,
) -> None:
    # The head went out already: the client must see a short body, never a clean end.
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 300 + b"y" * 300
    )
    try:
        balancer = await balancer_factory([raw.url])
        reader, writer = await asyncio.open_connection(*balancer.host_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Content-Length: 1000" in head
        body = await asyncio.wait_for(reader.read(), 5)  # returns at EOF: the balancer closed
        assert len(body) == 600
        writer.close()
    finally:
        await raw.stop()


async def test_invalid_backend_response_is_502(balancer_factory: StartBalancer) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    )
    try:
        balancer = await balancer_factory([raw.url])
        response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert response.status == 502
    finally:
        await raw.stop()


async def test_interim_responses_are_never_the_final_one(balancer_factory: StartBalancer) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        balancer = await balancer_factory([raw.url])
        response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (response.status, response.body) == (200, b"ok")
    finally:
        await raw.stop()


async def test_hop_by_hop_response_headers_are_removed(balancer_factory: StartBalancer) -> None:
    raw = await start_raw_backend(
        b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=9\r\n"
        b"Trailer: X-T\r\nX-Public: 2\r\nContent-Length: 2\r\n\r\nok"
    )
    try:
        balancer = await balancer_factory([raw.url])
        response = await raw_exchange(balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        names = {n.lower() for n, _ in response.headers}
        assert "x-internal" not in names and "keep-alive" not in names and "trailer" not in names
        assert response.header("X-Public") == ["2"]
    finally:
        await raw.stop()


async def test_retry_that_finds_no_other_backend_answers_with_the_last_attempts_502(
    balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([closed_port_url()])  # retries: 1, but nobody else
    async with session.get(balancer.url + "/") as response:
        assert response.status == 502
        assert "Retry-After" not in response.headers
