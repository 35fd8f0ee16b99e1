"""What the workers of one balancer share (SPEC §6), through the real command: health checks
probe each backend once per interval for the whole balancer, each verdict reaches every
worker, a breaker that opens in one worker opens in all, and a restarted worker starts from
where the others stand."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from conftest import StartBalancer
from support import Backend, Balancer, eventually, pids, status

WORKERS = "workers: 2\n"


def admin_path(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--admin-path") + 1]


async def ask_worker(pid: int, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """One worker's own admin app, on its private Unix socket (as the supervisor asks it)."""
    connector = aiohttp.UnixConnector(path=admin_path(pid))
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.request(method, f"http://worker{path}", data=body or None) as response,
    ):
        return response.status, json.loads(await response.read())


async def backend_view(pid: int, name: str) -> dict[str, Any]:
    code, body = await ask_worker(pid, "GET", "/status")
    assert code == 200
    return next(b for b in body["backends"] if b["name"] == name)


async def every_worker(balancer: Balancer, name: str, key: str, value: object) -> bool:
    for pid in pids(await status(balancer)):
        if (await backend_view(pid, name))[key] != value:
            return False
    return True


async def test_each_backend_is_probed_once_per_interval_for_the_whole_balancer(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    """Two workers, one probe loop: over 3 s at interval 0.2 s (+-10 % jitter) a backend sees
    about 15 probes; a loop per worker would make it about 30."""
    extra = WORKERS + "health_check:\n  interval: 200ms\n"
    await balancer_factory([b.url for b in backends], extra)
    start = backends[0].probes
    began = time.monotonic()
    await asyncio.sleep(3.0)  # a window to count in, not a wait for a condition
    probes = backends[0].probes - start
    seconds = time.monotonic() - began
    assert probes <= seconds / (0.2 * 0.9) + 2, probes
    assert probes >= seconds / (0.2 * 1.1) / 2, probes  # and probing goes on


async def test_a_health_verdict_reaches_every_worker_and_a_restarted_one(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    extra = WORKERS + "health_check:\n  interval: 100ms\n  fall: 1\n  rise: 1\n"
    balancer = await balancer_factory([b.url for b in backends], extra)
    backends[1].set_healthy(False)
    await eventually(lambda: every_worker(balancer, "b1", "health", "unhealthy"), timeout=10)
    view = await backend_view(pids(await status(balancer))[0], "b1")
    assert view["last_check"] == "status 503"  # the probe's detail travels too
    assert view["load"] == {"cpu": 0.25, "memory": 0.5}  # and the load it reported
    seen = len(backends[1].seen)
    for _ in range(20):
        async with aiohttp.ClientSession() as client, client.get(balancer.url + "/") as answer:
            assert answer.headers["X-Backend"] == "b0"
    assert len(backends[1].seen) == seen
    # A reload to a long interval: the supervisor's loop restarts from the verdict it holds
    # (its first probe fails again), so b1 stays down; a worker killed now comes back with
    # b1 down from its first request, not healthy until a probe in 30 s.
    config = balancer.stderr_path.parent / "balancer.yaml"
    config.write_text(config.read_text().replace("interval: 100ms", "interval: 30s"))
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200, await response.text()
    old = pids(await status(balancer))
    os.kill(old[1], signal.SIGKILL)

    async def replaced() -> int | None:
        workers = (await status(balancer))["workers"]
        new = workers[1]
        return int(new["pid"]) if new["up"] and new["pid"] != old[1] else None

    new = await eventually(replaced, timeout=15)
    assert (await backend_view(new, "b1"))["health"] == "unhealthy"
    # Back up: one probe later every worker routes to it again (rise 1), with the 30 s interval
    # a reload brings the check at once.
    backends[1].set_healthy(True)
    async with aiohttp.ClientSession() as client:
        config.write_text(config.read_text().replace("interval: 30s", "interval: 100ms"))
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200
    await eventually(lambda: every_worker(balancer, "b1", "health", "healthy"), timeout=10)


async def test_a_breaker_that_opens_in_one_worker_opens_in_all_and_closes_in_all(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    """Failures sent on one keep-alive connection reach one worker; its breaker opens, and so
    does the other worker's, which saw none of them. The trial after reset_timeout succeeds in
    one worker and the breaker closes in both."""
    extra = WORKERS + (
        "health_check:\n  interval: 30s\n"
        "circuit_breaker:\n  failure_threshold: 3\n  reset_timeout: 1s\n"
        "retries: 0\n"
    )
    balancer = await balancer_factory([backends[0].url], extra)
    workers = pids(await status(balancer))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client:
        for _ in range(3):
            async with client.get(balancer.url + "/status/502") as response:
                assert response.status == 502
    await eventually(lambda: every_worker(balancer, "b0", "breaker", "open"), timeout=5)
    views = [await backend_view(pid, "b0") for pid in workers]
    assert sorted(v["consecutive_failures"] for v in views)[0] == 0  # one worker saw none

    # After reset_timeout each worker is half-open; the first trial that succeeds closes it
    # everywhere (fresh connections: either worker may take it).
    async def trial() -> bool:
        async with aiohttp.ClientSession() as client, client.get(balancer.url + "/") as answer:
            await answer.read()
        return await every_worker(balancer, "b0", "breaker", "closed")

    await eventually(trial, timeout=10)
    stderr = balancer.stderr()
    opened = [line for line in stderr.splitlines() if "circuit breaker closed -> open" in line]
    assert len(opened) == 1, opened  # logged once, by the worker where it happened


async def test_forged_or_malformed_peer_events_are_refused_and_change_nothing(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    pid = pids(await status(balancer))[0]
    bad = [
        b"not json",
        b'{"kind": "breaker"}',
        b'[{"kind": "breaker", "backend": "b0", "state": "melted"}]',
        b'[{"kind": "probe", "backend": "b0", "health": "healthy", "detail": 7, "passed": true}]',
        b'[{"kind": "probe", "backend": "b0", "health": "down", "detail": "", "passed": true}]',
        b'[{"kind": "state", "backend": "b0", "health": "unhealthy", "detail": "x", "cpu": "hi"}]',
        b'[{"kind": "gossip", "backend": "b0"}]',
        b'[{"kind": "breaker", "backend": ["b0"], "state": "open"}]',
    ]
    for body in bad:
        code, answer = await ask_worker(pid, "POST", "/peer/events", body)
        assert code == 400 and "bad peer events" in answer["error"], (body, answer)
    view = await backend_view(pid, "b0")
    assert (view["health"], view["breaker"]) == ("healthy", "closed")
    # An unknown backend is skipped (a reload may have removed it), the rest applies.
    body = b'[{"kind": "breaker", "backend": "gone", "state": "open"}]'
    assert (await ask_worker(pid, "POST", "/peer/events", body))[0] == 200
    # The peer route is the private socket's alone: the admin port does not have it.
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/peer/events", data=b"[]") as response:
            assert response.status in (404, 405)
    # The supervisor's socket takes breaker events from workers, nothing else.
    supervisor = str(Path(admin_path(pid)).parent / "supervisor.sock")
    assert oct(os.stat(Path(supervisor).parent).st_mode & 0o777) == "0o700"
    connector = aiohttp.UnixConnector(path=supervisor)
    async with aiohttp.ClientSession(connector=connector) as client:
        probe = b'[{"kind": "state", "backend": "b0", "health": "unhealthy", "detail": "x"}]'
        for query, data in (("?worker=0", probe), ("?worker=x", b"[]"), ("?worker=0", b"{")):
            async with client.post(f"http://s/events{query}", data=data) as response:
                assert response.status == 400
    assert await every_worker(balancer, "b0", "health", "healthy")
