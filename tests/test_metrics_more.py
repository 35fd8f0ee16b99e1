"""The series beyond SPEC's (issue: complete metrics), through the real command: reloads by
result, health probes by result with their durations, breaker transitions, client
connections open; with workers the balancer-wide ones are counted once, by the supervisor."""

from __future__ import annotations

import shutil
import subprocess

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, RedisServer, eventually, fresh_get

WORKERS = "workers: 2\n"


async def metrics(balancer: Balancer) -> tuple[str, dict[str, float]]:
    code, text = await fresh_get(balancer.admin_url + "/metrics")
    assert code == 200
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    return text, {name: float(value) for name, value in samples}


async def reload(balancer: Balancer) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            return response.status


def promtool_passes(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("workers", ["", WORKERS], ids=["one process", "workers"])
async def test_reloads_probes_and_breaker_transitions_are_counted_once(
    backends: list[Backend], balancer_factory: StartBalancer, workers: str
) -> None:
    extra = workers + (
        "health_check:\n  interval: 100ms\n"
        "circuit_breaker:\n  failure_threshold: 2\n  reset_timeout: 30s\nretries: 0\n"
    )
    balancer = await balancer_factory([backends[0].url], extra)
    assert await reload(balancer) == 200
    config = balancer.stderr_path.parent / "balancer.yaml"
    good = config.read_text()
    config.write_text(good + "strategy: fastest\n")
    assert await reload(balancer) == 400
    config.write_text(good)

    async def probed() -> dict[str, float] | None:
        _, values = await metrics(balancer)
        passes = values.get('balancer_health_checks_total{backend="b0",result="pass"}', 0)
        return values if passes >= 3 else None

    values = await eventually(probed, timeout=10)
    assert values['balancer_reloads_total{result="ok"}'] == 1  # not once per worker
    assert values['balancer_reloads_total{result="failed"}'] == 1
    assert values['balancer_health_checks_total{backend="b0",result="fail"}'] == 0
    count = values['balancer_health_check_duration_seconds_count{backend="b0"}']
    assert count >= 3
    assert values['balancer_health_check_duration_seconds_bucket{backend="b0",le="+Inf"}'] == count
    # Two failures on one connection (one worker) open the breaker: one transition, counted
    # where it happened, not again in the worker that took it on.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client:
        for _ in range(2):
            async with client.get(balancer.url + "/status/503") as response:
                assert response.status == 503
        _, values = await metrics(balancer)  # a fresh connection of its own, for the admin
        opened = 'balancer_circuit_breaker_transitions_total{backend="b0",to="open"}'
        assert values[opened] == 1
        # The client connection still open (keep-alive) is counted.
        assert values["balancer_client_connections"] >= 1
    text, _ = await metrics(balancer)
    promtool_passes(text)


async def test_client_connections_go_back_down(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([backends[0].url])
    async with aiohttp.ClientSession() as client:
        async with client.get(balancer.url + "/") as response:
            assert response.status == 200

    async def none_open() -> bool:
        _, values = await metrics(balancer)
        return values["balancer_client_connections"] == 0

    await eventually(none_open)


async def test_bytes_and_retries_by_reason(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    dead = "http://127.0.0.1:9"  # connect refused: every request that picks it is retried
    balancer = await balancer_factory([dead, backends[0].url], "retries: 1\n")
    async with aiohttp.ClientSession() as client:
        for _ in range(4):
            async with client.post(balancer.url + "/sink", data=b"u" * 1000) as response:
                assert response.status == 200
                body = await response.read()
    _, values = await metrics(balancer)
    assert values['balancer_backend_request_bytes_total{backend="b1"}'] == 4000
    assert values['balancer_backend_response_bytes_total{backend="b1"}'] == 4 * len(body)
    assert values['balancer_backend_request_bytes_total{backend="b0"}'] == 0
    assert values['balancer_retries_total{backend="b0",reason="connect_failed"}'] >= 1
    assert not any(name.startswith('balancer_retries_total{backend="b1"') for name in values)


async def test_sticky_lookups_and_the_redis_call_latency(
    backends: list[Backend], balancer_factory: StartBalancer, redis_server: RedisServer
) -> None:
    extra = f"sticky:\n  mode: header\nredis:\n  url: {redis_server.url}\n"
    balancer = await balancer_factory([b.url for b in backends], extra)
    async with aiohttp.ClientSession() as client:
        for session in ("a", "a", "a", "b"):
            headers = {"X-Session-Id": session}
            async with client.get(balancer.url + "/", headers=headers) as response:
                assert response.status == 200
    text, values = await metrics(balancer)
    assert values['balancer_sticky_lookups_total{result="miss"}'] == 2  # a, then b
    # The near cache answers a hot key without Redis: hits counted all the same.
    assert values['balancer_sticky_lookups_total{result="hit"}'] == 2
    assert values["balancer_sticky_store_call_duration_seconds_count"] >= 2
    assert values["balancer_sticky_store_errors_total"] == 0
    promtool_passes(text)
