"""Malformed or ambiguous requests get a 4xx and never reach a backend; heads have a deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import StartBalancer
from support import Backend, Balancer, raw_exchange, read_response

SMALL_LIMITS = """
limits:
  max_request_line: 200
  max_header_line: 200
  max_head: 1KB
  max_headers: 8
"""

REFUSED = [
    (
        "cl_and_te",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "conflicting_cl",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("non_numeric_cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3x\r\n\r\nabc", 400),
    ("signed_cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n", 400),
    ("no_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n", 400),
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    ("duplicate_host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (
        "te_not_chunked_last",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te_unknown_coding",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    ("te_in_http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("bare_lf", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("ctl_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", 400),
    ("long_request_line", b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
    ("long_header_line", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"b" * 300 + b"\r\n\r\n", 431),
    (
        "too_many_headers",
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(12))
        + b"\r\n",
        431,
    ),
]


@pytest.fixture
async def strict_balancer(backends: list[Backend], balancer_factory: StartBalancer) -> Balancer:
    return await balancer_factory(
        [b.url for b in backends], SMALL_LIMITS + "timeouts:\n  client_header: 1s\n"
    )


@pytest.mark.parametrize(("name", "request_bytes", "status"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_ambiguous_requests_are_refused_and_never_forwarded(
    strict_balancer: Balancer, backends: list[Backend], name: str, request_bytes: bytes, status: int
) -> None:
    response = await raw_exchange(strict_balancer.host_port, request_bytes)
    assert response.status == status
    assert [b.seen for b in backends] == [[], []]


async def test_whole_head_over_max_head_is_431(
    strict_balancer: Balancer, backends: list[Backend]
) -> None:
    # Eight lines of 180 bytes: each line and the count pass, the whole head does not.
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 170) for i in range(7))
    response = await raw_exchange(
        strict_balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
    )
    assert response.status == 431
    assert [b.seen for b in backends] == [[], []]


async def test_body_over_max_body_is_413(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "limits:\n  max_body: 10\n")
    response = await raw_exchange(
        balancer.host_port,
        b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
    )
    assert response.status == 413
    assert [b.seen for b in backends] == [[], []]


async def test_trickled_head_gets_408_at_the_deadline(
    strict_balancer: Balancer, backends: list[Backend]
) -> None:
    reader, writer = await asyncio.open_connection(*strict_balancer.host_port)
    started = time.monotonic()
    try:
        answer = b""
        for byte in b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(100), 0.1)
            except TimeoutError:
                continue
            break
        elapsed = time.monotonic() - started
        answer += await asyncio.wait_for(reader.read(), 2)  # returns at EOF: closed after the 408
        assert answer.startswith(b"HTTP/1.1 408")
        assert 0.9 < elapsed < 2.5
    finally:
        writer.close()
    assert [b.seen for b in backends] == [[], []]


async def test_silent_connection_gets_408_from_accept(strict_balancer: Balancer) -> None:
    reader, writer = await asyncio.open_connection(*strict_balancer.host_port)
    try:
        answer = await asyncio.wait_for(reader.read(), 3)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        writer.close()


async def test_kept_alive_connection_counts_from_the_heads_first_byte(
    strict_balancer: Balancer,
) -> None:
    reader, writer = await asyncio.open_connection(*strict_balancer.host_port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        # Idle past client_header (1s) between requests is client_idle's business, not 408.
        await asyncio.sleep(1.3)
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()


async def test_idle_kept_alive_connection_closes_after_client_idle(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "timeouts:\n  client_idle: 1s\n")
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF: the balancer closed it
        assert 0.5 < time.monotonic() - started < 3.5
    finally:
        writer.close()
