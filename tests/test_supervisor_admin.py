"""The supervisor's admin app against stand-in workers on Unix sockets: a worker that does
not answer is `up: false` and skipped (never a 500), actions reach every worker that is up,
and the modes set are replayed to a worker that starts again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from balancer.config import parse_config
from balancer.supervisor_admin import WorkerAdmin, make_supervisor_app

CONFIG = parse_config("backends:\n  - url: http://127.0.0.1:9001\n    name: b0\n", env={})


@dataclass
class FakeWorker:
    index: int
    admin_path: str
    pid: int = 0
    ready: bool = True
    restarts: int = 0
    posts: list[str] = field(default_factory=list)


def worker_app(worker: FakeWorker, requests: int) -> web.Application:
    view = {"name": "b0", "url": "http://127.0.0.1:9001", "state": "healthy", "breaker": "closed"}

    async def status(request: web.Request) -> web.Response:
        backend = {**view, "routable": True, "requests_total": requests, "latency_ewma_ms": 1.0}
        body = {"version": "0.1.0", "strategy": "round_robin", "queued": 0, "backends": [backend]}
        return web.json_response(body)

    async def action(request: web.Request) -> web.Response:
        worker.posts.append(request.path)
        if request.match_info["name"] != "b0":
            return web.json_response({"error": "no backend named 'x'"}, status=404)
        return web.json_response({**view, "state": "draining", "requests_total": requests})

    async def metrics(request: web.Request) -> web.Response:
        text = f"# HELP balancer_x X\n# TYPE balancer_x counter\nbalancer_x_total {requests}\n"
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/backends/{name}/{action}", action)
    return app


Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def stand_ins(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[FakeWorker]]]:
    runners: list[web.AppRunner] = []

    async def start(requests: int) -> FakeWorker:
        worker = FakeWorker(len(runners), str(tmp_path / f"w{len(runners)}.sock"), pid=100)
        runner = web.AppRunner(worker_app(worker, requests))
        await runner.setup()
        await web.UnixSite(runner, worker.admin_path).start()
        runners.append(runner)
        return worker

    yield start
    for runner in runners:
        await runner.cleanup()


async def client_for(workers: list[Any], aiohttp_client: Any) -> tuple[Client, WorkerAdmin]:
    admin = WorkerAdmin(CONFIG, lambda: workers)
    client: Client = await aiohttp_client(make_supervisor_app(admin, admin.reload_all))
    return client, admin


async def test_a_worker_that_does_not_answer_is_skipped_never_a_500(
    tmp_path: Path, stand_ins: Callable[[int], Awaitable[FakeWorker]], aiohttp_client: Any
) -> None:
    up = await stand_ins(7)
    gone = FakeWorker(1, str(tmp_path / "gone.sock"), pid=200)  # its socket: nobody there
    client, admin = await client_for([up, gone], aiohttp_client)
    response = await client.get("/status")
    assert response.status == 200
    body = await response.json()
    assert [(w["index"], w["up"], w["requests_total"]) for w in body["workers"]] == [
        (0, True, 7),
        (1, False, 0),
    ]
    assert body["backends"][0]["requests_total"] == 7
    metrics = await (await client.get("/metrics")).text()
    assert "balancer_workers_up 1.0" in metrics and "balancer_x_total 7.0" in metrics
    assert (await client.get("/health/live")).status == 200
    up.ready = False  # restarting, like the other: /status says so, in JSON
    response = await client.get("/status")
    assert response.status == 503 and len((await response.json())["workers"]) == 2
    assert (await client.post("/backends/b0/drain")).status == 503
    await admin.close()


async def test_actions_reach_every_worker_and_are_replayed_to_a_new_one(
    stand_ins: Callable[[int], Awaitable[FakeWorker]], aiohttp_client: Any
) -> None:
    workers = [await stand_ins(3), await stand_ins(4)]
    client, admin = await client_for(workers, aiohttp_client)
    response = await client.post("/backends/b0/drain")
    assert response.status == 200
    assert (await response.json())["requests_total"] == 7  # merged: both answered
    assert [w.posts for w in workers] == [["/backends/b0/drain"]] * 2
    missing = await client.post("/backends/x/drain")
    assert missing.status == 404 and "no backend" in (await missing.json())["error"]
    foreign = await client.post("/backends/b0/enable", headers={"Origin": "http://evil.example"})
    assert foreign.status == 403  # refused before any worker is asked
    assert all(len(w.posts) == 2 for w in workers)
    fresh = await stand_ins(0)
    await admin.replay(fresh)
    assert fresh.posts == ["/backends/b0/drain"]
    await client.post("/backends/b0/enable")
    again = await stand_ins(0)
    await admin.replay(again)
    assert again.posts == []  # enabled again: nothing to replay
    await admin.close()


async def test_a_worker_that_dies_while_asked_does_not_mix_up_the_answers(
    stand_ins: Callable[[int], Awaitable[FakeWorker]], aiohttp_client: Any
) -> None:
    first, second = await stand_ins(3), await stand_ins(4)
    client, admin = await client_for([first, second], aiohttp_client)
    real_call = admin.call

    async def call(worker: Any, method: str, path: str, body: bytes = b"") -> Any:
        answer = await real_call(worker, method, path, body)
        first.ready = False  # the supervisor saw it exit meanwhile
        return answer

    admin.call = call  # type: ignore[method-assign]
    response = await client.get("/status")
    assert response.status == 200
    workers = (await response.json())["workers"]
    assert [(w["up"], w["requests_total"]) for w in workers] == [(True, 3), (True, 4)]
    await admin.close()


async def test_a_backend_name_with_url_characters_reaches_the_workers_intact(
    stand_ins: Callable[[int], Awaitable[FakeWorker]], aiohttp_client: Any
) -> None:
    """A name may hold `?`, `#` and `%` (only space and `/` are refused): the path passed on
    to each worker is quoted again, never the decoded one (which would cut it at `?`)."""
    workers = [await stand_ins(3), await stand_ins(4)]
    client, admin = await client_for(workers, aiohttp_client)
    response = await client.post("/backends/%3Ci%3Ea%3Fb%23c%25d%26/drain")
    assert response.status == 404  # the stand-ins know b0 only, and say so
    assert [w.posts for w in workers] == [["/backends/<i>a?b#c%d&/drain"]] * 2
    admin.remember("x?y", "drain")
    fresh = await stand_ins(0)
    await admin.replay(fresh)
    assert fresh.posts == ["/backends/x?y/drain"]
    await admin.close()
