"""The upload and the response head race (proxy._head_or_upload_failure): whichever finishes
first, a body cut short is never forgotten and its connection never serves another request.
Real sockets and real tasks; the order is forced by waiting for the head before the upload
fails, so both are done when the race is judged."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from balancer.errors import BackendDropped, BadRequest
from balancer.pipeline.upload import completed as _completed
from balancer.pipeline.upload import head_or_upload_failure as _head_or_upload_failure
from balancer.upstream import UpstreamConnection
from balancer.upstream_pool import UpstreamPool

from support import eventually, start_raw_backend


async def _answered_connection(url: str) -> tuple[UpstreamPool, UpstreamConnection]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    pool = UpstreamPool(
        parts.hostname,
        parts.port,
        use_tls=False,
        connect_timeout=2,
        read_timeout=5,
        loop=asyncio.get_running_loop(),
    )
    conn = await pool.connect()
    conn.send_head(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 10\r\n\r\n", "POST", body=True)
    head = asyncio.ensure_future(conn.read_head())
    await eventually(head.done)  # the backend answered early, before the body
    return pool, conn


async def test_a_client_body_failure_is_the_answer_even_when_the_head_came_too() -> None:
    raw = await start_raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=False)
    try:
        pool, conn = await _answered_connection(raw.url)

        async def broken_upload() -> None:
            raise BadRequest("malformed request body")

        upload = asyncio.ensure_future(broken_upload())
        await asyncio.wait([upload])
        with pytest.raises(BadRequest):
            await _head_or_upload_failure(conn, upload)
        assert not _completed(upload)
        pool.close()
    finally:
        await raw.stop()


async def test_a_refused_write_after_an_early_answer_keeps_the_answer_but_not_the_connection() -> (
    None
):
    raw = await start_raw_backend(
        b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n", close=False
    )
    try:
        pool, conn = await _answered_connection(raw.url)

        async def refused_upload() -> None:
            raise BackendDropped("backend closed the connection")

        upload = asyncio.ensure_future(refused_upload())
        await asyncio.wait([upload])
        head = await _head_or_upload_failure(conn, upload)
        assert head.status == 413
        assert not _completed(upload)  # so the proxy never pools this connection
        pool.close()
    finally:
        await raw.stop()
