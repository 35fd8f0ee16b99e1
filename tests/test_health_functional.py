"""Backends fail, clients don't notice: health checks, circuit breakers, drain and disable."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import StartBalancer
from support import Backend, Balancer, eventually, start_backend

FAST_CHECKS = """
health_check:
  interval: 200ms
  timeout: 500ms
  rise: 2
  fall: 2
"""


async def backend_status(
    session: aiohttp.ClientSession, balancer: Balancer, name: str
) -> dict[str, Any]:
    async with session.get(balancer.admin_url + "/status") as response:
        status = await response.json()
    return next(b for b in status["backends"] if b["name"] == name)


async def served_by(session: aiohttp.ClientSession, balancer: Balancer, count: int) -> list[str]:
    names = []
    for _ in range(count):
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
            names.append(response.headers["X-Backend"])
    return names


async def test_failing_health_checks_take_a_backend_out_and_passing_ones_bring_it_back(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], FAST_CHECKS)
    await eventually(lambda: backends[1].probes >= 1)  # the first probe runs at once
    backends[1].set_healthy(False)

    async def unhealthy() -> bool:
        return (await backend_status(session, balancer, "b1"))["state"] == "unhealthy"

    await eventually(unhealthy, timeout=5)
    assert set(await served_by(session, balancer, 6)) == {"b0"}
    metrics = await (await session.get(balancer.admin_url + "/metrics")).text()
    assert 'balancer_backend_healthy{backend="b1"} 0.0' in metrics

    backends[1].set_healthy(True)

    async def healthy() -> bool:
        return (await backend_status(session, balancer, "b1"))["state"] == "healthy"

    await eventually(healthy, timeout=5)
    assert set(await served_by(session, balancer, 6)) == {"b0", "b1"}
    assert "b1 is unhealthy: health check status 503" in balancer.stderr()


async def test_health_checks_read_reported_load(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], FAST_CHECKS)

    async def load() -> Any:
        return (await backend_status(session, balancer, "b0"))["load"]

    assert await eventually(load) == {"cpu": 0.25, "memory": 0.5}


async def test_all_unhealthy_is_503_at_once_and_not_ready(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], FAST_CHECKS)
    for backend in backends:
        backend.set_healthy(False)

    async def not_ready() -> bool:
        async with session.get(balancer.admin_url + "/health/ready") as response:
            return response.status == 503

    await eventually(not_ready, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(balancer.url + "/") as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
    assert loop.time() - started < 0.5


async def test_breaker_opens_on_refusals_half_opens_and_closes_when_the_backend_returns(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    """A backend that starts refusing is out after failure_threshold failures (before any
    probe says so), the requests that hit it are retried elsewhere (clients see 200s), and
    after reset_timeout one trial request decides."""
    config = """
health_check:
  interval: 1h
circuit_breaker:
  failure_threshold: 2
  reset_timeout: 1s
"""
    balancer = await balancer_factory([b.url for b in backends], config)
    port = backends[1].port
    await backends[1].stop()
    assert set(await served_by(session, balancer, 6)) == {"b0"}  # retried: all 200
    status = await backend_status(session, balancer, "b1")
    assert status["breaker"] == "open"
    assert status["failures_total"] == 2  # two refusals opened it; no attempt since
    metrics = await (await session.get(balancer.admin_url + "/metrics")).text()
    assert 'balancer_circuit_breaker_state{backend="b1"} 2.0' in metrics

    async def breaker(state: str) -> bool:
        return (await backend_status(session, balancer, "b1"))["breaker"] == state

    await eventually(lambda: breaker("half_open"), timeout=3)
    assert set(await served_by(session, balancer, 2)) == {"b0"}  # the trial failed, retried
    assert await breaker("open")

    backends[1] = await start_backend("b1", port)
    await eventually(lambda: breaker("half_open"), timeout=3)
    names = await served_by(session, balancer, 4)
    assert "b1" in names  # the trial succeeded: closed again
    assert await breaker("closed")
    log = balancer.stderr()
    assert "b1: circuit breaker closed -> open" in log
    assert "b1: circuit breaker half_open -> closed" in log


async def test_breaker_counts_configured_5xx_but_never_4xx(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    config = "circuit_breaker:\n  failure_threshold: 3\n  reset_timeout: 1h\nhealth_check:\n  interval: 1h\n"
    balancer = await balancer_factory([backends[0].url], config)
    for _ in range(5):
        async with session.get(balancer.url + "/status/404") as response:
            assert response.status == 404
    assert (await backend_status(session, balancer, "b0"))["breaker"] == "closed"
    for _ in range(3):
        async with session.get(balancer.url + "/status/503") as response:
            assert response.status == 503  # the backend's own answer is passed on
    status = await backend_status(session, balancer, "b0")
    assert status["breaker"] == "open"
    async with session.get(balancer.url + "/") as response:
        assert response.status == 503  # nothing routable now
        assert "Retry-After" in response.headers


async def test_drain_disable_enable(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    for action, state in (("drain", "draining"), ("disable", "disabled")):
        async with session.post(f"{balancer.admin_url}/backends/b1/{action}") as response:
            assert response.status == 200
            assert (await response.json())["state"] == state
        assert (await backend_status(session, balancer, "b1"))["state"] == state
        assert set(await served_by(session, balancer, 4)) == {"b0"}
    async with session.post(f"{balancer.admin_url}/backends/b1/enable") as response:
        assert (await response.json())["state"] == "healthy"
    assert set(await served_by(session, balancer, 4)) == {"b0", "b1"}
    async with session.post(f"{balancer.admin_url}/backends/nope/drain") as response:
        assert response.status == 404
        body = await response.json()
        assert "nope" in body["error"] and body["backends"] == ["b0", "b1"]


async def test_disabling_every_backend_makes_it_not_ready(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    for name in ("b0", "b1"):
        await session.post(f"{balancer.admin_url}/backends/{name}/disable")
    async with session.get(balancer.admin_url + "/health/ready") as response:
        assert response.status == 503
    async with session.get(balancer.url + "/") as response:
        assert response.status == 503


# -- a probe that fails in any way is a failed probe (SPEC §2) ---------------------------------


@pytest.fixture
async def choking_backend() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A real backend whose /health answers 200 with a body nested deeper than Python's JSON
    decoder recurses (the load parser raises RecursionError), until `state["nested"]` is False."""
    state: dict[str, Any] = {"nested": True, "probes": 0}

    async def health(request: web.Request) -> web.Response:
        state["probes"] += 1
        body = b'{"cpu": ' + b"[" * 50_000 if state["nested"] else b'{"cpu": 0.1}'
        return web.Response(body=body, content_type="application/json")

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/", root)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", state
    await runner.cleanup()


async def test_a_probe_our_code_chokes_on_fails_and_probing_goes_on(
    choking_backend: tuple[str, dict[str, Any]],
    balancer_factory: StartBalancer,
    session: aiohttp.ClientSession,
) -> None:
    url, state = choking_backend
    balancer = await balancer_factory([url], FAST_CHECKS)

    async def state_is(wanted: str) -> bool:
        return (await backend_status(session, balancer, "b0"))["state"] == wanted

    await eventually(lambda: state_is("unhealthy"), timeout=5)  # a 200 that counted as failed
    seen = state["probes"]
    await eventually(lambda: state["probes"] >= seen + 3, timeout=5)  # still probing
    status = await backend_status(session, balancer, "b0")
    assert "RecursionError" in status["last_check"], status
    state["nested"] = False
    await eventually(lambda: state_is("healthy"), timeout=5)  # rise counted too
    log = balancer.stderr()
    assert log.count("b0: health check failed: RecursionError") == 1, log  # once, not per probe


def test_check_names_a_health_check_path_that_is_not_visible_ascii(tmp_path: Path) -> None:
    config = tmp_path / "balancer.yaml"
    config.write_text("backends:\n  - url: http://127.0.0.1:9001\nhealth_check:\n  path: /santé\n")
    result = subprocess.run(
        [sys.executable, "-m", "balancer", "--check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        f"{config}:4: health_check.path: 'é' is not visible ASCII (RFC 9112 3.2.1): "
        "percent-encode it, got '/santé'"
    )
