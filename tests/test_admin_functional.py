"""The admin API (SPEC §3) and graceful shutdown (SPEC §1), through the real command."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, eventually


async def test_status_has_the_spec_shape(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    async with session.get(balancer.url + "/") as response:
        assert response.status == 200
    status = await (await session.get(balancer.admin_url + "/status")).json()
    assert status["version"] == "0.1.0"
    assert status["strategy"] == "round_robin"
    assert status["uptime_seconds"] > 0
    assert status["sticky"] == {"mode": "off", "store": "memory", "available": True}
    first, second = status["backends"]
    assert first["name"] == "b0" and second["name"] == "b1"
    assert first["state"] == "healthy" and first["breaker"] == "closed"
    assert first["requests_total"] == 1 and second["requests_total"] == 0
    assert first["latency_ewma_ms"] > 0
    for backend in status["backends"]:
        assert set(backend) >= {
            "name",
            "url",
            "weight",
            "state",
            "breaker",
            "in_flight",
            "requests_total",
            "attempts_total",
            "failures_total",
            "routable",
            "breaker_retry_in_seconds",
            "latency_ewma_ms",
        }
        assert all(value is not None for value in backend.values())


async def test_health_probes(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    live = await balancer_factory([b.url for b in backends])
    async with session.get(live.admin_url + "/health/live") as response:
        assert response.status == 200
    async with session.get(live.admin_url + "/health/ready") as response:
        assert response.status == 200
    config = (
        "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
        f"backends:\n  - url: {backends[0].url}\n    weight: 0\n"
    )
    idle = await balancer_factory([], config=config)
    async with session.get(idle.admin_url + "/health/ready") as response:
        assert response.status == 503


async def test_metrics_series(
    balancer: Balancer, session: aiohttp.ClientSession, tmp_path: object
) -> None:
    for path in ("/", "/status/404", "/"):
        async with session.get(balancer.url + path) as response:
            await response.read()
    async with session.get(balancer.admin_url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'balancer_requests_total{backend="b0",code="200"} 2.0' in text
    assert 'balancer_requests_total{backend="b1",code="404"} 1.0' in text
    assert 'balancer_request_duration_seconds_count{backend="b0"} 2.0' in text
    assert 'balancer_backend_healthy{backend="b0"} 1.0' in text
    assert 'balancer_backend_in_flight{backend="b1"} 0.0' in text
    assert 'balancer_circuit_breaker_state{backend="b0"} 0.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_sigterm_lets_in_flight_requests_finish_then_exits_0(
    balancer: Balancer, backends: list[Backend], session: aiohttp.ClientSession
) -> None:
    slow = asyncio.ensure_future(session.get(balancer.url + "/slow?delay=1"))
    await eventually(lambda: backends[0].seen)
    balancer.process.send_signal(signal.SIGTERM)
    response = await asyncio.wait_for(slow, 10)
    assert response.status == 200
    assert await response.text() == "slow b0\n"
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(balancer.url + "/")


async def test_shutdown_does_not_wait_for_idle_connections(
    balancer: Balancer, session: aiohttp.ClientSession
) -> None:
    _reader, writer = await asyncio.open_connection(*balancer.host_port)  # idle, kept open
    async with session.get(balancer.url + "/") as response:  # a kept-alive client too
        assert response.status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    balancer.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 0
    assert loop.time() - started < 3  # shutdown_timeout is 30s: nothing idle held it
    writer.close()


async def test_shutdown_timeout_cuts_long_requests(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "shutdown_timeout: 1s\n")
    slow = asyncio.ensure_future(session.get(balancer.url + "/slow?delay=30"))
    await eventually(lambda: backends[0].seen)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    balancer.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 0
    # Cut at shutdown_timeout, not later (aiohttp alone would wait twice as long).
    assert 0.9 <= loop.time() - stopped_at < 1.8
    with pytest.raises(aiohttp.ClientError):
        response = await asyncio.wait_for(slow, 5)
        await response.read()
    assert "still in flight" in balancer.stderr()


async def test_the_admin_root_lists_the_endpoints(balancer: Balancer) -> None:
    """To a client that asks for JSON (a browser gets the dashboard: test_dashboard.py)."""
    async with aiohttp.ClientSession() as session:
        headers = {"Accept": "application/json"}
        async with session.get(balancer.admin_url + "/", headers=headers) as response:
            assert response.status == 200
            body = await response.json()
    paths = {(e["method"], e["path"]) for e in body["endpoints"]}
    assert {("GET", "/status"), ("GET", "/metrics"), ("POST", "/backends/{name}/drain")} <= paths
    assert {("GET", "/"), ("GET", "/series"), ("GET", "/dashboard/{file}")} <= paths
    assert all(e["what"] for e in body["endpoints"])


async def test_an_unknown_action_is_a_json_404_like_an_unknown_name(balancer: Balancer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(balancer.admin_url + "/backends/b1/pause") as response:
            assert response.status == 404
            body = await response.json()
        assert body == {
            "error": "no backend action 'pause'",
            "actions": ["drain", "disable", "enable"],
        }
        async with session.post(balancer.admin_url + "/backends/nope/pause") as response:
            assert response.status == 404
            assert (await response.json())["backends"] == ["b0", "b1"]
        status = await (await session.get(balancer.admin_url + "/status")).json()
        assert [b["state"] for b in status["backends"]] == ["healthy", "healthy"]


async def test_a_get_on_an_action_is_a_json_405_that_names_post(balancer: Balancer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(balancer.admin_url + "/backends/b1/drain") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "POST"
            body = await response.json()
        assert body["error"] == "GET does not change a backend: use POST /backends/b1/drain"
        async with session.post(balancer.admin_url + "/status") as response:
            assert response.status == 405
            assert "use GET" in (await response.json())["error"]
        status = await (await session.get(balancer.admin_url + "/status")).json()
        assert status["backends"][1]["state"] == "healthy"
