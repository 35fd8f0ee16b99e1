"""Health-check units: rise/fall counting, reported load, a probe loop that never dies."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from balancer.backend import Backend
from balancer.config import BackendConfig, HealthCheckConfig
from balancer.health import HealthChecker, LocalHealth, RiseFall, parse_load, target_of
from balancer.upstream_pool import UpstreamPool

from support import eventually, start_backend


@pytest.mark.parametrize(
    ("results", "verdicts"),
    [
        ("ppp", [None, None, None]),
        ("ff", [None, None]),
        ("fff", [None, None, "unhealthy"]),
        ("ffpfff", [None, None, None, None, None, "unhealthy"]),  # a pass resets the streak
        ("fffp", [None, None, "unhealthy", None]),  # rise 2: one pass is not enough
        ("fffpp", [None, None, "unhealthy", None, "healthy"]),
        ("fffpfpp", [None, None, "unhealthy", None, None, None, "healthy"]),
    ],
)
def test_rise_fall(results: str, verdicts: list[str | None]) -> None:
    counter = RiseFall(rise=2, fall=3)
    assert [counter.observe(r == "p") for r in results] == verdicts


def test_rise_fall_of_one_flips_at_once() -> None:
    counter = RiseFall(rise=1, fall=1)
    assert [counter.observe(p) for p in (False, False, True, True)] == [
        "unhealthy",
        None,
        "healthy",
        None,
    ]


@pytest.mark.parametrize(
    ("body", "header", "load"),
    [
        (b'{"cpu": 0.42, "memory": 0.61}', None, (0.42, 0.61)),
        (b'{"cpu": 1.7, "memory": -1}', None, (1.0, 0.0)),  # clamped to 0..1
        (b'{"cpu": true, "memory": "x"}', None, (None, None)),
        (b"ok", None, (None, None)),
        (b"{not json", None, (None, None)),
        (b"", b"cpu=0.3, memory=0.2", (0.3, 0.2)),
        (b"", b"cpu=0.3;memory=oops", (0.3, None)),
        (b'{"cpu": 0.9}', b"cpu=0.1, memory=0.2", (0.9, 0.2)),  # the body wins per key
    ],
)
def test_parse_load(
    body: bytes, header: bytes | None, load: tuple[float | None, float | None]
) -> None:
    assert parse_load(body, header) == load


async def test_a_probe_that_raises_is_a_failed_probe_and_probing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SPEC §2: a path that bypassed config (not latin-1: the probe's own encode raises) makes
    every probe fail; the loop keeps probing, counts the failures, and logs the error once."""
    loop = asyncio.get_running_loop()
    server = await start_backend("b0")
    upstream = UpstreamPool(
        "127.0.0.1", server.port, use_tls=False, connect_timeout=1, read_timeout=1, loop=loop
    )
    backend = Backend(BackendConfig(server.url, "b0", 1), upstream)
    checks = HealthCheckConfig(path="/h\u20ac", interval=0.01, timeout=1.0, rise=1, fall=2)
    sink = LocalHealth(lambda: {"b0": backend})
    checker = HealthChecker([target_of(backend)], checks, sink, loop=loop, rng=random.Random(1))
    caplog.set_level(logging.WARNING, logger="balancer.health")
    checker.start()
    try:
        await eventually(lambda: backend.health == "unhealthy")  # fall: 2 failures counted
        await eventually(lambda: checker.stats["b0"].results["fail"] >= 10)  # probing went on
        assert not any(task.done() for task in checker._tasks.values())
    finally:
        await checker.stop()
        await server.stop()
        upstream.close()
    assert "failed: UnicodeEncodeError" in backend.last_check
    errors = [r for r in caplog.records if r.getMessage().startswith("backend b0: health check")]
    assert len(errors) == 1, [r.message for r in caplog.records]  # once, not once a probe
    assert errors[0].levelno == logging.WARNING
    assert server.probes == 0  # nothing malformed ever reached the backend
