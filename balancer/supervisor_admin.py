"""The one admin port of a balancer with several workers (SPEC §6), served by the supervisor.

Each worker serves its own admin app on a private Unix socket; this app asks every worker
that is up (a short timeout each, all at once) and answers for the whole balancer: `/status`
and `/metrics` merged (admin_merge), admin actions passed to every worker and answered once
every one answered. A worker that does not answer (restarting) is shown `up: false` and
skipped, never a 500. Actions are remembered and replayed to a worker that (re)starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from balancer import dashboard
from balancer.admin import MODES, index, json_errors, refuse_foreign_origins
from balancer.admin_auth import require_token
from balancer.admin_merge import merge_backend, merge_metrics, merge_status, requests_served
from balancer.alerts import DISABLED, AlertService
from balancer.config import Config
from balancer.decisions import SIZE as DECISIONS
from balancer.window import Sampler, Snapshot, Totals, summed

log = logging.getLogger("balancer.supervisor")

CALL_TIMEOUT = 2.0  # seconds for one worker to answer one admin call


class WorkerLike(Protocol):
    index: int
    pid: int
    ready: bool  # announced, admitted: its admin socket answers
    admin_path: str
    restarts: int


Answer = tuple[int, bytes]
ReloadAnswer = tuple[int, dict[str, Any]]  # POST /reload's status and JSON body


class WorkerAdmin:
    """Calls to the workers' admin sockets, and the actions to replay to a new worker."""

    def __init__(self, config: Config, workers: Callable[[], Sequence[WorkerLike]]) -> None:
        self.config = config
        self.workers = workers
        self.modes: dict[str, str] = {}  # backend -> the last drain/disable (enable: none)
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, path: str) -> aiohttp.ClientSession:
        session = self._sessions.get(path)
        if session is None:
            # force_close: a kept-alive connection to a worker that died is no use.
            connector = aiohttp.UnixConnector(path=path, force_close=True)
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # nothing of one answer goes with the next
            )
            self._sessions[path] = session
        return session

    async def call(
        self, worker: WorkerLike, method: str, path: str, body: bytes = b""
    ) -> Answer | None:
        """The worker's answer, or None when it gives none within CALL_TIMEOUT."""
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
        session = self._session(worker.admin_path)
        try:
            async with session.request(
                method, f"http://worker{path}", data=body or None, timeout=timeout
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("worker %d (pid %d): %s %s: %r", worker.index, worker.pid, method, path, exc)
            return None

    async def ask_all(
        self, method: str, path: str, body: bytes = b""
    ) -> list[tuple[WorkerLike, Answer | None]]:
        workers = list(self.workers())
        asked = [i for i, w in enumerate(workers) if w.ready]  # now: `ready` changes meanwhile
        got = await asyncio.gather(*(self.call(workers[i], method, path, body) for i in asked))
        answers = dict(zip(asked, got, strict=True))
        return [(w, answers.get(i)) for i, w in enumerate(workers)]

    def remember(self, name: str, action: str) -> None:
        if action == "enable":
            self.modes.pop(name, None)
        else:
            self.modes[name] = action

    async def replay(self, worker: WorkerLike) -> None:
        """The modes the admin API set, to a worker that (re)started: it took them on before
        it listened; one set since then reaches it now."""
        for name, action in list(self.modes.items()):
            answer = await self.call(worker, "POST", action_path(name, action))
            if answer is None or answer[0] != 200:
                log.warning("worker %d: could not %s backend %s again", worker.index, action, name)

    async def reload_all(self) -> ReloadAnswer:
        """Every worker reloads the file; answered once all did (SPEC §3), 400 if any
        refused it (they read the same file: the problems are the first refusal's)."""
        asked = await self.ask_all("POST", "/reload")
        answers = [(w, a) for w, a in asked if a is not None]
        if not answers:
            return 503, {"reloaded": False, "error": "no worker answered (restarting?)"}
        views = [(w, view) for w, a in answers if isinstance(view := _json(a), dict)]
        refused = [view for _, view in views if not view.get("reloaded")]
        per_worker = [{"index": w.index, "reloaded": bool(v.get("reloaded"))} for w, v in views]
        if refused or not views:
            problems = (refused or [{}])[0].get("problems", [])
            return 400, {"reloaded": False, "problems": problems, "workers": per_worker}
        return 200, {**views[0][1], "workers": per_worker}

    async def merged_status(self) -> dict[str, Any] | None:
        """The whole balancer's /status (what the alerts judge), None when no worker answers."""
        asked = await self.ask_all("GET", "/status")
        statuses = [
            body
            for _, answer in asked
            if answer is not None and answer[0] == 200 and isinstance(body := _json(answer), dict)
        ]
        return merge_status(statuses) if statuses else None

    async def totals(self) -> Snapshot:
        """Every worker's counters, summed (for the sampler); a worker that does not answer or
        answers garbage is left out of this sample."""
        snapshots = []
        for _, answer in await self.ask_all("GET", "/totals"):
            body = _json(answer) if answer is not None and answer[0] == 200 else None
            if isinstance(body, dict):
                try:
                    snapshots.append({n: Totals.from_json(t) for n, t in body.items()})
                except (ValueError, TypeError):
                    continue
        if not snapshots:
            raise RuntimeError("no worker answered")
        return summed(snapshots)

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()
        self._sessions.clear()


def action_path(name: str, action: str) -> str:
    """`/backends/{name}/{action}` for a worker, each part quoted again: a name may hold
    `?`, `#` or `%` (only space and `/` are refused), and request.path is decoded."""
    return f"/backends/{quote(name, safe='')}/{quote(action, safe='')}"


def _json(answer: Answer) -> Any:
    try:
        return json.loads(answer[1])
    except ValueError:
        return None


def _workers_list(
    asked: list[tuple[WorkerLike, Answer | None]], statuses: dict[int, Any]
) -> list[dict[str, Any]]:
    return [
        {
            "index": w.index,
            "pid": w.pid,
            "up": w.index in statuses,
            "requests_total": requests_served(statuses[w.index]) if w.index in statuses else 0,
            "restarts": w.restarts,
        }
        for w, _ in asked
    ]


async def _without_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("Server", None)


def _passed_on(answer: Answer) -> web.Response:
    return web.Response(body=answer[1], status=answer[0], content_type="application/json")


def make_supervisor_app(
    admin: WorkerAdmin,
    reload_all: Callable[[], Awaitable[ReloadAnswer]],
    *,
    clock: Callable[[], float] = time.monotonic,
    sampler: Sampler | None = None,
    own_metrics: Callable[[], Iterable[Metric]] = tuple,
    own_status: Callable[[], dict[str, Any]] = dict,
    alerts: AlertService | None = None,
) -> web.Application:
    started = clock()

    async def get_status(request: web.Request) -> web.Response:
        asked = await admin.ask_all("GET", "/status")
        statuses = {
            w.index: body
            for w, answer in asked
            if answer is not None and answer[0] == 200 and isinstance(body := _json(answer), dict)
        }
        workers = _workers_list(asked, statuses)
        if not statuses:
            return web.json_response(
                {"error": "no worker answered (restarting?)", "workers": workers}, status=503
            )
        merged = merge_status(list(statuses.values()))
        merged["uptime_seconds"] = round(clock() - started, 3)
        merged.update(own_status())  # what the supervisor holds for all (its reload counts)
        merged["workers"] = workers
        return web.json_response(merged)

    async def get_metrics(request: web.Request) -> web.Response:
        asked = await admin.ask_all("GET", "/metrics")
        texts = [a[1].decode() for _, a in asked if a is not None and a[0] == 200]
        up = GaugeMetricFamily("balancer_workers_up", "Worker processes whose admin answered")
        up.add_metric([], len(texts))
        restarts = CounterMetricFamily(
            "balancer_worker_restarts", "Workers restarted after they died", labels=["worker"]
        )
        for w, _ in asked:
            restarts.add_metric([str(w.index)], w.restarts)
        firing = () if alerts is None else (alerts.engine.family(),)  # the supervisor's alone
        try:
            body = merge_metrics(texts, extra=(up, restarts, *own_metrics(), *firing))
        except ValueError as exc:  # a worker's text that does not parse: a bug, said so
            return web.json_response({"error": f"cannot merge the metrics: {exc}"}, status=502)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def live(request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def ready(request: web.Request) -> web.Response:
        asked = await admin.ask_all("GET", "/health/ready")
        ready = [a for _, a in asked if a is not None and a[0] == 200]
        body = {"status": "ready" if ready else "unavailable", "workers_ready": len(ready)}
        return web.json_response(body, status=200 if ready else 503)

    async def set_mode(request: web.Request) -> web.Response:
        """Passed to every worker (each checks name, action and method as one process
        does); answered once all answered, with the backend as the whole balancer sees it."""
        body = await request.read()
        name, action = request.match_info["name"], request.match_info["action"]
        # A re-pin moves the sessions in the one shared Redis: one worker does it, after every
        # worker took the drain (two at once would move some sessions twice).
        repin_body = body if b"repin" in body else b""
        asked = await admin.ask_all(
            request.method, action_path(name, action), b"" if repin_body else body
        )
        answers = [(w, a) for w, a in asked if a is not None]
        if not answers:
            return web.json_response({"error": "no worker answered (restarting?)"}, status=503)
        refused = [a for _, a in answers if a[0] != 200]
        if refused:
            status, text = refused[0]
            return web.Response(body=text, status=status, content_type="application/json")
        for w, answer in asked:
            if answer is None:  # replayed to it when it starts again
                log.warning("worker %d (pid %d) did not answer %s", w.index, w.pid, request.path)
        if action in MODES:
            admin.remember(name, action)
        views = [view for _, a in answers if isinstance(view := _json(a), dict)]
        if not views:
            return web.json_response({"error": "the workers' answers are not JSON"}, status=502)
        merged = merge_backend(views)
        if repin_body:
            answer = await admin.call(answers[0][0], "POST", action_path(name, action), repin_body)
            if answer is None:
                return web.json_response({"error": "the re-pin got no answer"}, status=503)
            if answer[0] != 200:
                return web.Response(
                    body=answer[1], status=answer[0], content_type="application/json"
                )
            merged["repinned"] = (_json(answer) or {}).get("repinned", 0)
            # The others' own copies of the moved sessions (a near cache, the fallback copy).
            local = b'{"repin": true, "local_only": true}'
            others = [w for w, _ in answers[1:]]
            await asyncio.gather(
                *(admin.call(w, "POST", action_path(name, action), local) for w in others)
            )
        return web.json_response(merged)

    async def decisions(request: web.Request) -> web.Response:
        """Every worker's ring, newest first across them, at most the limit asked."""
        asked = await admin.ask_all("GET", request.path_qs)
        answers = [a for _, a in asked if a is not None]
        if not answers:
            return web.json_response({"error": "no worker answered (restarting?)"}, status=503)
        refused = [a for a in answers if a[0] != 200]
        if refused:
            return _passed_on(refused[0])
        merged = [
            d
            for a in answers
            if isinstance(body := _json(a), dict)
            for d in body.get("decisions", [])
            if isinstance(d, dict)
        ]
        merged.sort(key=lambda d: float(d.get("time", 0)), reverse=True)
        limit = int(request.query.get("limit", DECISIONS))  # each worker checked it already
        return web.json_response({"decisions": merged[:limit]})

    async def sticky_table(request: web.Request) -> web.Response:
        """The table is Redis' (with several workers sticky needs it): one worker reads it."""
        for worker, answer in [(w, None) for w in admin.workers() if w.ready][:1]:
            answer = await admin.call(worker, "GET", request.path_qs)
            if answer is not None:
                return web.Response(
                    body=answer[1], status=answer[0], content_type="application/json"
                )
        return web.json_response({"error": "no worker answered (restarting?)"}, status=503)

    async def reload(request: web.Request) -> web.Response:
        status, body = await reload_all()
        return web.json_response(body, status=status)

    token = require_token(lambda: admin.config.admin.token)
    app = web.Application(middlewares=[refuse_foreign_origins, token, json_errors])
    app.on_response_prepare.append(_without_server_header)

    async def series(request: web.Request) -> web.Response:
        return web.json_response(sampler.series() if sampler is not None else {})

    async def get_alerts(request: web.Request) -> web.Response:
        return web.json_response(alerts.as_json() if alerts is not None else DISABLED)

    app.router.add_post("/reload", reload)
    app.router.add_get("/series", series)
    app.router.add_get("/sticky", sticky_table)
    app.router.add_get("/decisions", decisions)
    app.router.add_get("/alerts", get_alerts)
    dashboard.add_routes(app, index)
    app.router.add_route("*", "/backends/{name}/{action}", set_mode)
    app.router.add_get("/status", get_status)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health/live", live)
    app.router.add_get("/health/ready", ready)
    return app
