from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from support import Backend, Balancer, RedisServer, free_port, start_backend, start_balancer

StartBalancer = Callable[..., Awaitable[Balancer]]


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started = [await start_backend("b0"), await start_backend("b1")]
    yield started
    for backend in started:
        await backend.stop()


@pytest.fixture
async def balancer_factory(tmp_path: Path) -> AsyncIterator[StartBalancer]:
    running: list[Balancer] = []

    async def start(
        urls: list[str], extra: str = "", *, config: str | None = None, **kwargs: object
    ) -> Balancer:
        directory = tmp_path / f"balancer{len(running)}"
        directory.mkdir()
        balancer = await start_balancer(directory, urls, extra, config_text=config, **kwargs)  # type: ignore[arg-type]
        running.append(balancer)
        return balancer

    yield start
    for balancer in running:
        await balancer.stop(timeout=5)


@pytest.fixture
async def balancer(backends: list[Backend], balancer_factory: StartBalancer) -> Balancer:
    return await balancer_factory([b.url for b in backends])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
    ) as client:
        yield client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.kill()
