"""The admin port at the edge, through the real command and raw sockets: cross-origin calls
(SPEC §3) and the request-head deadline (SPEC §4)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, RawResponse, raw_exchange, read_response


def admin_address(balancer: Balancer) -> tuple[str, int]:
    host, port = balancer.admin_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def admin_call(
    balancer: Balancer, method: str, path: str, *fields: str, address: str | None = None
) -> RawResponse:
    """One raw call to the admin port: the test writes every field, `Host` included."""
    host, port = admin_address(balancer)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{f}\r\n" for f in fields)
    head += "Content-Length: 0\r\nConnection: close\r\n\r\n"
    return await raw_exchange((address or host, port), head.encode("latin-1"), timeout=5)


async def backend_state(balancer: Balancer, name: str) -> str:
    response = await admin_call(balancer, "GET", "/status", "Host: x")
    status = json.loads(response.body)
    return next(str(b["state"]) for b in status["backends"] if b["name"] == name)


@pytest.mark.parametrize(
    "origin",
    [
        "Origin: http://evil.example",
        "Origin: null",  # a sandboxed iframe, a data: URL: another origin (SPEC §3)
        "Origin: http://127.0.0.1:1",  # the admin's host, another port
        "Origin: https://{host}",  # the admin's host and port, another scheme
        "Origin: http://{host}/",  # not a serialised origin
        "Origin: http://{host}\r\nOrigin: http://{host}",  # several fields
        "Origin: http://localhost:{port}",  # reached as 127.0.0.1: another host
    ],
)
async def test_cross_origin_posts_are_refused_and_change_nothing(
    balancer: Balancer, origin: str
) -> None:
    host, port = admin_address(balancer)
    fields = origin.format(host=f"{host}:{port}", port=port)
    response = await admin_call(
        balancer, "POST", "/backends/b0/drain", f"Host: {host}:{port}", fields
    )
    assert response.status == 403
    assert response.header("Content-Type")[0].startswith("application/json")
    assert "origin" in json.loads(response.body)["error"].lower()
    assert await backend_state(balancer, "b0") == "healthy"


async def test_a_foreign_origin_is_refused_before_routing(balancer: Balancer) -> None:
    """SPEC §3 "before anything else is looked at": an unknown backend, an unknown path."""
    for path in ("/backends/nope/drain", "/nothing-here"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = await admin_call(
                balancer, method, path, "Host: a", "Origin: http://evil.example"
            )
            assert response.status == 403, (method, path)


@pytest.mark.parametrize(
    ("connect_to", "host_field", "origin"),
    [
        ("127.0.0.1", "127.0.0.1:{port}", "http://127.0.0.1:{port}"),
        ("localhost", "localhost:{port}", "http://localhost:{port}"),
        ("127.0.0.1", "LocalHost:{port}", "HTTP://localhost:{port}"),  # RFC 6454: any case
        ("127.0.0.1", "admin.internal:{port}", "http://admin.internal:{port}"),  # a proxy name
    ],
)
async def test_the_admins_own_origin_passes(
    balancer: Balancer, connect_to: str, host_field: str, origin: str
) -> None:
    _, port = admin_address(balancer)
    response = await admin_call(
        balancer,
        "POST",
        "/backends/b0/drain",
        f"Host: {host_field.format(port=port)}",
        f"Origin: {origin.format(port=port)}",
        address=connect_to,
    )
    assert response.status == 200, response.body
    assert await backend_state(balancer, "b0") == "draining"


async def test_calls_without_origin_and_reads_with_one_pass(balancer: Balancer) -> None:
    response = await admin_call(balancer, "POST", "/backends/b1/disable", "Host: a")
    assert response.status == 200  # curl, scripts: no Origin, not refused by this rule
    assert await backend_state(balancer, "b1") == "disabled"
    response = await admin_call(
        balancer, "GET", "/status", "Host: a", "Origin: http://evil.example"
    )
    assert response.status == 200  # a read changes nothing
    assert json.loads(response.body)["backends"][1]["state"] == "disabled"


async def test_admin_head_deadline_cuts_a_slowloris(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    """SPEC §4: `timeouts.client_header` bounds the whole head on the admin port too, counted
    from accept; trickling bytes does not extend it. Past it: 408 and close."""
    balancer = await balancer_factory([b.url for b in backends], "timeouts:\n  client_header: 1s\n")
    reader, writer = await asyncio.open_connection(*admin_address(balancer))
    started = time.monotonic()
    writer.write(b"GET /status HTTP/1.1\r\nHost: a\r\n")

    async def trickle() -> None:
        for n in range(100):  # what a slowloris does: a field line now and then
            writer.write(b"X-%d: y\r\n" % n)
            await writer.drain()
            await asyncio.sleep(0.2)

    trickling = asyncio.ensure_future(trickle())
    try:
        # Meanwhile the admin port keeps answering.
        async with session.get(balancer.admin_url + "/status") as answer:
            assert answer.status == 200
        response = await read_response(reader, timeout=5)
        assert response.status == 408
        assert 0.9 <= time.monotonic() - started < 3
        assert response.header("Connection") == ["close"]
        assert "client_header" in json.loads(response.body)["error"]  # admin errors are JSON
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
        async with session.get(balancer.admin_url + "/status") as answer:
            assert answer.status == 200
    finally:
        trickling.cancel()
        writer.close()


async def test_admin_errors_are_json(balancer: Balancer) -> None:
    """SPEC §3: aiohttp's own 404 and 405 too, not its plain-text pages."""
    missing = await admin_call(balancer, "GET", "/nothing-here", "Host: a")
    assert missing.status == 404
    assert json.loads(missing.body)["error"] == "Not Found"
    wrong = await admin_call(balancer, "POST", "/status", "Host: a")
    assert wrong.status == 405
    assert json.loads(wrong.body)["error"] == "POST is not allowed here: use GET,HEAD"
    assert wrong.header("Allow") == ["GET,HEAD"]


async def test_malformed_admin_requests_are_refused_in_json(balancer: Balancer) -> None:
    """The front's parser refusals, answered as JSON on the admin port (SPEC §3)."""
    response = await raw_exchange(
        admin_address(balancer), b"GET /status HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n"
    )
    assert response.status == 400
    assert response.header("Content-Type")[0].startswith("application/json")
    assert json.loads(response.body)["error"] == "400 Bad Request"
    long_line = b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    response = await raw_exchange(admin_address(balancer), long_line)
    assert response.status == 414  # limits.max_request_line, as on the proxy port
    assert json.loads(response.body)["error"] == "414 URI Too Long"
