"""What /status, /metrics and the logs say is what the balancer does (issue 14): attempts vs
answers, states and routability, an open breaker shortened by passing health checks, 499s,
log levels, the startup block, routing decisions at debug, a second Ctrl-C, no Server banner."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from typing import Any

import aiohttp

from conftest import StartBalancer
from support import Backend, Balancer, eventually, json_get, raw_exchange, start_backend


async def _backend(session: aiohttp.ClientSession, balancer: Balancer, name: str) -> Any:
    status = await json_get(session, balancer.admin_url + "/status")
    return next(b for b in status["backends"] if b["name"] == name)


async def test_an_open_breaker_shows_unroutable_with_its_retry_time_and_passing_checks_end_it(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory(
        [b.url for b in backends],
        """
        health_check: {interval: 200ms, timeout: 150ms, rise: 2, fall: 100}
        circuit_breaker: {failure_threshold: 1, reset_timeout: 60s}
        """,
    )
    port = backends[1].port
    await backends[1].stop()
    for _ in range(4):  # one of these meets b1 refusing: its breaker opens (retried on b0)
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
    b1 = await _backend(session, balancer, "b1")
    assert (b1["breaker"], b1["routable"], b1["state"]) == ("open", False, "healthy")
    assert 0 < b1["breaker_retry_in_seconds"] <= 60
    # Failing probes never shorten it.
    await asyncio.sleep(1.0)  # five failing probe intervals (the scenario itself)
    assert (await _backend(session, balancer, "b1"))["breaker"] == "open"

    backends[1] = await start_backend("b1", port)
    started = time.monotonic()

    async def routable_again() -> bool:
        return bool((await _backend(session, balancer, "b1"))["routable"])

    await eventually(routable_again, timeout=5)
    assert time.monotonic() - started < 5  # not the 60 s of reset_timeout
    served = set()
    for _ in range(6):
        async with session.get(balancer.url + "/") as response:
            served.add(response.headers["X-Backend"])
    assert served == {"b0", "b1"}
    b1 = await _backend(session, balancer, "b1")
    assert (b1["breaker"], b1["breaker_retry_in_seconds"]) == ("closed", 0)
    assert "health checks passed 2 times since the breaker opened" in balancer.stderr()


async def test_requests_total_counts_answers_and_attempts_total_every_try(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "health_check: {interval: 1h}\n")
    await backends[1].stop()
    for _ in range(4):
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
    b0, b1 = [await _backend(session, balancer, n) for n in ("b0", "b1")]
    assert b0["requests_total"] == 4  # b0 answered all four
    assert b1["requests_total"] == 0 and b1["attempts_total"] >= 1


async def test_backend_state_series_say_draining_while_healthy_says_the_checks(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    async with session.post(balancer.admin_url + "/backends/b1/drain") as response:
        assert response.status == 200
    async with session.get(balancer.admin_url + "/metrics") as response:
        metrics = await response.text()
    assert 'balancer_backend_state{backend="b1",state="draining"} 1.0' in metrics
    assert 'balancer_backend_state{backend="b1",state="healthy"} 0.0' in metrics
    assert 'balancer_backend_state{backend="b0",state="healthy"} 1.0' in metrics
    assert 'balancer_backend_healthy{backend="b1"} 1.0' in metrics  # the checks still pass
    assert 'balancer_backend_routable{backend="b1"} 0.0' in metrics
    assert (await _backend(session, balancer, "b1"))["routable"] is False


async def test_a_client_gone_mid_request_is_499_logged_and_never_a_backend_failure(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory(
        [backends[0].url], "circuit_breaker: {failure_threshold: 1}\n"
    )
    for _ in range(2):
        reader, writer = await asyncio.open_connection(*balancer.host_port)
        writer.write(b"GET /slow?delay=3 HTTP/1.1\r\nHost: a\r\n\r\n")
        await writer.drain()
        await eventually(lambda: len(backends[0].seen) > 0)
        writer.transport.abort()
        del reader

    async def counted() -> bool:
        async with session.get(balancer.admin_url + "/metrics") as response:
            text = await response.text()
        return 'balancer_requests_total{backend="b0",code="499"} 2.0' in text

    await eventually(counted, timeout=5)
    b0 = await _backend(session, balancer, "b0")
    assert (b0["failures_total"], b0["breaker"]) == (0, "closed")
    lines = [line for line in balancer.stderr().splitlines() if " 499 GET /slow" in line]
    assert len(lines) == 2 and all(" INFO " in line for line in lines)


async def test_routine_events_are_info_and_the_startup_block_says_what_runs(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    for action in ("disable", "enable"):
        async with session.post(f"{balancer.admin_url}/backends/b1/{action}") as response:
            assert response.status == 200
    log = balancer.stderr()
    enabled = [line for line in log.splitlines() if "enabled by the admin API" in line]
    assert enabled and " INFO " in enabled[0]
    assert re.search(r" INFO balancer: balancer \S+: strategy round_robin, sticky off", log)
    assert re.search(r" INFO balancer: proxy listening on http://127\.0\.0\.1:\d+", log)
    assert re.search(r" INFO balancer: admin listening on http://127\.0\.0\.1:\d+", log)
    assert re.search(r" INFO balancer: backend b0 http://127\.0\.0\.1:\d+ weight 1", log)


async def test_debug_logs_each_routing_decision_with_its_exclusions(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    async with session.post(balancer.admin_url + "/backends/b1/drain") as response:
        assert response.status == 200
    async with session.get(balancer.url + "/decided") as response:
        assert response.status == 200
    await eventually(lambda: "route GET /decided -> b0; excluded: b1=draining" in balancer.stderr())


async def test_a_second_signal_cuts_what_is_in_flight_says_how_many_and_exits_1(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([backends[0].url], "shutdown_timeout: 30s\n")
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(b"GET /slow?delay=20 HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    await eventually(lambda: len(backends[0].seen) == 1)
    balancer.process.send_signal(signal.SIGINT)
    await eventually(lambda: "stopping" in balancer.stderr())
    started = time.monotonic()
    balancer.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 1
    assert time.monotonic() - started < 5
    assert "second signal: cutting 1 request(s) still in flight" in balancer.stderr()
    writer.close()
    del reader


async def test_the_balancers_own_answers_name_no_server(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([backends[0].url], "health_check: {interval: 1h}\n")
    refused = await raw_exchange(
        balancer.host_port, b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n"
    )
    assert refused.status == 400 and refused.header("Server") == []
    async with session.get(balancer.url + "/") as response:  # the backend's own passes
        assert "aiohttp" in response.headers["Server"]
    async with session.post(balancer.admin_url + "/backends/b0/disable") as response:
        assert "Server" not in response.headers
    async with session.get(balancer.url + "/") as response:
        assert response.status == 503 and "Server" not in response.headers
    async with session.get(balancer.admin_url + "/status") as response:
        assert "Server" not in response.headers
    async with session.get(balancer.admin_url + "/no-such-page") as response:
        assert response.status == 404 and "Server" not in response.headers
