"""`workers: N` (SPEC §6): a supervisor binds the proxy's listening sockets once, starts N
workers on them, restarts one that dies, passes signals on, and serves the one admin port.

The shape of gunicorn's arbiter and uvicorn's multiprocess supervisor: signal handlers only
put an event on a queue, and one loop (`_dispatch`) makes every decision, so a signal, a death
and a restart never race. Each worker is a fresh interpreter (`python -m balancer.worker`)
that inherits the sockets (`pass_fds`) and runs `serve()` on them; it is in a process group
of its own, so a terminal's Ctrl+C reaches the supervisor alone, which passes one SIGTERM on
(two, Ctrl+C twice, cut the requests in flight as in one process).

The supervisor also holds what the workers share (shared_state): it runs the health checks
for the whole balancer and relays breaker changes between workers. A reload (SIGHUP or POST
/reload) is checked here first (a bad file or a restart-only change asks no worker), then
every worker reloads, then the supervisor's own copy of the config follows: the one a
restarted worker starts from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client.core import Metric

from balancer.alert_webhook import Webhook
from balancer.alerts import AlertService, View, view_of
from balancer.config import Config
from balancer.control import reread
from balancer.http.admin_server import AdminRunner
from balancer.listener import bind
from balancer.metrics import health_families, reload_family
from balancer.overrides import NO_OVERRIDES, CommandLine
from balancer.server import log_start
from balancer.shared_state import Peer, SharedState
from balancer.supervisor_admin import ReloadAnswer, WorkerAdmin, make_supervisor_app
from balancer.window import Sampler
from balancer.worker import exited, listening, start_worker
from balancer.worker_start import WorkerStart

log = logging.getLogger("balancer.supervisor")

BACKLOG = 1024  # as one process: where connections past limits.max_connections wait
START_TIMEOUT = 30.0  # seconds for a worker to say it listens
BACKOFF_FIRST, BACKOFF_MAX, STEADY = 0.5, 10.0, 30.0  # restart delays; a worker up 30 s resets
STOP_GRACE = 10.0  # past shutdown_timeout, a worker still running is killed


@dataclass(eq=False)
class Worker:
    """One slot: its index and admin socket stay, its process changes with each restart."""

    index: int
    admin_path: str
    process: asyncio.subprocess.Process | None = None
    pid: int = 0
    listening: bool = False  # its sockets and admin socket are open
    ready: bool = False  # listening, and the admin API's modes were replayed to it
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    restart: asyncio.TimerHandle | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Exited:
    worker: Worker
    process: asyncio.subprocess.Process
    code: int


@dataclass(frozen=True)
class Admitted:  # it listens, and the admin API's modes were replayed to it
    worker: Worker
    process: asyncio.subprocess.Process


Event = int | Exited | Admitted | Worker | str  # a signal, ..., a restart due, "deadline"


def describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _url(sockname: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class StartupError(Exception):
    pass


class Supervisor:
    def __init__(
        self, config: Config, path: str | None = None, overrides: CommandLine = NO_OVERRIDES
    ) -> None:
        self.config = config
        self.path = path
        self.overrides = overrides
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.directory = tempfile.mkdtemp(prefix="balancer-")  # 0700: ours alone
        self.workers = [
            Worker(i, os.path.join(self.directory, f"worker-{i}.sock"))
            for i in range(config.workers)
        ]
        self.admin = WorkerAdmin(config, lambda: self.workers)
        self.peer_path = os.path.join(self.directory, "supervisor.sock")
        self.shared: SharedState | None = None
        self._reload_lock = asyncio.Lock()
        self.reloads_ok = self.reloads_failed = 0
        self.sockets: list[socket.socket] = []
        self.announced = False
        self.stopping = False
        self.status = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.add_signal_handler(sig, self.events.put_nowait, sig)
        sampler = Sampler(self.admin.totals)
        alerts = self._alerts(sampler)
        runner = AdminRunner(
            make_supervisor_app(
                self.admin,
                self.reload,
                sampler=sampler,
                own_metrics=self._own_metrics,
                own_status=lambda: {
                    "reloads": {"ok": self.reloads_ok, "failed": self.reloads_failed}
                },
                alerts=alerts,
            ),
            limits=self.config.limits,
            timeouts=self.config.timeouts,
            handle_signals=False,
        )
        await runner.setup()
        self.shared = shared = SharedState(self.config, lambda: self.workers, self._send, loop=loop)
        peer_runner = web.AppRunner(shared.make_app(), handle_signals=False)
        await peer_runner.setup()
        try:
            await web.UnixSite(peer_runner, self.peer_path).start()
            listen, admin = self.config.listen, self.config.admin.listen
            try:
                self.sockets = await bind(listen.host, listen.port, backlog=BACKLOG)
            except OSError as exc:
                raise StartupError(f"cannot listen on {listen} (proxy): {exc.strerror}") from None
            site = web.TCPSite(runner, admin.host, admin.port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(f"cannot listen on {admin} (admin): {exc.strerror}") from None
            log.info("starting %d workers", len(self.workers))
            shared.start()
            sampler.start()
            alerts.start()
            for worker in self.workers:
                await self._spawn(worker)
            await self._dispatch(runner)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            await self._kill_all()
            await shared.stop()
            await sampler.stop()
            await alerts.stop()
            await self.admin.close()
            await runner.cleanup()
            await peer_runner.cleanup()
            for sock in self.sockets:
                sock.close()
            shutil.rmtree(self.directory, ignore_errors=True)
        log.info("stopped")
        return self.status

    def _alerts(self, sampler: Sampler) -> AlertService:
        """The alerts of the whole balancer (SPEC §6), judged here over the workers' merged
        /status and the sampler of their summed counters; the workers judge none."""

        async def view() -> View | None:
            merged = await self.admin.merged_status()
            if merged is None:  # no worker answers (restarting): judge nothing now
                return None
            names = {backend.name for backend in self.config.backends}
            return view_of(merged, sampler.over, names)

        return AlertService(lambda: self.config.alerts, view, Webhook())

    # --- the one loop that decides ----------------------------------------------------------

    async def _dispatch(self, runner: web.BaseRunner) -> None:
        while self.stopping is False or self._running():
            event = await self.events.get()
            if isinstance(event, int):
                self._on_signal(signal.Signals(event))
            elif isinstance(event, Admitted):
                self._on_admitted(event, runner)
            elif isinstance(event, Exited):
                self._on_exit(event)
            elif isinstance(event, Worker):
                event.restart = None
                if not self.stopping:
                    await self._respawn(event)
            elif event == "deadline":
                log.error("workers still running %gs past shutdown_timeout: killing", STOP_GRACE)
                self.status = 1
                await self._kill_all()

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig == signal.SIGUSR1:
            log.info("SIGUSR1: passing it on (each worker reopens its access log)")
            self._send_all(signal.SIGUSR1)
            return
        if sig == signal.SIGHUP:
            if self.stopping:
                log.info("SIGHUP while stopping: ignored")
                return
            log.info("SIGHUP: reloading %s in every worker", self.path)
            task = asyncio.get_running_loop().create_task(self._reload_logged())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        if self.stopping:
            log.warning("second %s: passing it on (workers cut what is in flight)", sig.name)
            self._send_all(signal.SIGTERM)
            return
        log.info("%s: stopping every worker (each drains what it has in flight)", sig.name)
        self._stop()

    def _stop(self) -> None:
        self.stopping = True
        for worker in self.workers:
            if worker.restart is not None:
                worker.restart.cancel()
                worker.restart = None
        self._send_all(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        loop.call_later(
            self.config.shutdown_timeout + STOP_GRACE, self.events.put_nowait, "deadline"
        )

    def _on_admitted(self, event: Admitted, runner: web.BaseRunner) -> None:
        worker = event.worker
        if event.process is not worker.process or self.stopping:
            return
        worker.ready = True
        log.info("worker %d (pid %d) serving", worker.index, worker.pid)
        if not self.announced and all(w.ready for w in self.workers):
            self.announced = True
            self._announce(runner)

    def _on_exit(self, event: Exited) -> None:
        worker, code = event.worker, event.code
        if event.process is not worker.process:
            return
        serving, worker.process, worker.ready = worker.ready, None, False
        worker.listening = False
        if self.shared is not None:
            self.shared.left(worker)
        if self.stopping:
            log.info("worker %d (pid %d) %s", worker.index, worker.pid, describe(code))
            # Killed by our SIGTERM before it served: nothing was in flight. Any other status
            # (1: a second signal cut requests) makes ours 1.
            if code != 0 and not (code == -signal.SIGTERM and not serving):
                self.status = 1
            return
        if not self.announced:  # it could not start: neither will the others
            log.error(
                "worker %d (pid %d) %s while starting", worker.index, worker.pid, describe(code)
            )
            self.status = code if code in (1, 2) else 1
            self._stop()
            return
        if time.monotonic() - worker.started >= STEADY:
            worker.backoff = BACKOFF_FIRST
        delay, worker.backoff = worker.backoff, min(worker.backoff * 2, BACKOFF_MAX)
        log.error(
            "worker %d (pid %d) %s; restarting it in %gs",
            worker.index,
            worker.pid,
            describe(code),
            delay,
        )
        loop = asyncio.get_running_loop()
        worker.restart = loop.call_later(delay, self.events.put_nowait, worker)

    # --- processes -----------------------------------------------------------------------------

    def _running(self) -> bool:
        return any(w.process is not None for w in self.workers)

    def _send_all(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def _respawn(self, worker: Worker) -> None:
        try:
            await self._spawn(worker)
        except OSError as exc:  # out of processes or descriptors: try again later
            delay, worker.backoff = worker.backoff, min(worker.backoff * 2, BACKOFF_MAX)
            log.error("worker %d: cannot start one (%s); retrying in %gs", worker.index, exc, delay)
            loop = asyncio.get_running_loop()
            worker.restart = loop.call_later(delay, self.events.put_nowait, worker)

    async def _spawn(self, worker: Worker) -> None:
        assert self.shared is not None
        start = WorkerStart(
            self.config,
            self.overrides,
            self.peer_path,
            dict(self.admin.modes),
            self.shared.snapshot(),
        )
        process = await start_worker(start, worker.index, self.sockets, worker.admin_path)
        worker.process, worker.pid, worker.started = process, process.pid, time.monotonic()
        if self.announced:
            worker.restarts += 1
            log.warning("worker %d restarted: pid %d", worker.index, process.pid)
        else:
            log.info("worker %d started: pid %d", worker.index, process.pid)
        task = asyncio.create_task(self._watch(worker, process))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        """Wait for the worker to listen, replay the admin modes to it, then wait for its
        exit; the events go to the one loop."""
        try:
            async with asyncio.timeout(START_TIMEOUT):
                up = await listening(process)
        except TimeoutError:
            up = False
            log.error(
                "worker %d (pid %d) did not start in %gs", worker.index, worker.pid, START_TIMEOUT
            )
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if up and process is worker.process:
            worker.listening = True
            assert self.shared is not None
            self.shared.joined(worker)
            await self.admin.replay(worker)
            self.events.put_nowait(Admitted(worker, process))
        self.events.put_nowait(Exited(worker, process, await exited(process)))

    async def _kill_all(self) -> None:
        """What is left when the supervisor itself ends (the deadline, an error)."""
        for worker in self.workers:
            process = worker.process
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), 5)
                log.error("worker %d (pid %d) killed", worker.index, process.pid)

    def _own_metrics(self) -> list[Metric]:
        """What the supervisor exports for the whole balancer: its reloads, its probes."""
        families = [reload_family(self.reloads_ok, self.reloads_failed)]
        if self.shared is not None:
            families += health_families(self.shared.checker)
        return families

    async def _send(self, peer: Peer, body: bytes) -> bool:
        """Shared state to one worker (its peer events route); False if it did not take it."""
        worker = self.workers[peer.index]
        if not worker.listening:
            return False
        answer = await self.admin.call(worker, "POST", "/peer/events", body)
        return answer is not None and answer[0] == 200

    # --- reload --------------------------------------------------------------------------------

    async def reload(self) -> ReloadAnswer:
        """The file, checked here, then reloaded by every worker (SPEC §3, §6): (HTTP status,
        JSON body) for POST /reload."""
        async with self._reload_lock:
            if self.path is None:
                problems: tuple[str, ...] = ("no file to reload: the config was not read from one",)
                return 400, {"reloaded": False, "problems": list(problems)}
            config, problems = await reread(self.path, self.overrides, self.config)
            if config is None:
                self.reloads_failed += 1
                log.warning(
                    "reload refused, the old config keeps serving:\n  %s", "\n  ".join(problems)
                )
                return 400, {"reloaded": False, "problems": list(problems)}
            status, body = await self.admin.reload_all()
            if status != 200:
                self.reloads_failed += 1
                refusal = body.get("problems") or [body.get("error", "")]
                log.warning("reload refused by a worker:\n  %s", "\n  ".join(map(str, refusal)))
            else:
                self.reloads_ok += 1
                log.info("reloaded %s in every worker: %s", self.path, body.get("backends"))
                self.config = config
                self.admin.config = config
                assert self.shared is not None
                self.shared.sync(config)
            return status, body

    async def _reload_logged(self) -> None:
        await self.reload()

    def _announce(self, runner: web.BaseRunner) -> None:
        """The lines one process prints, once, for the whole balancer."""
        for sock in self.sockets:
            print(f"proxy listening on {_url(sock.getsockname())}")
        for address in runner.addresses:
            print(f"admin listening on {_url(address)}")
        for backend in self.config.backends:
            print(f"backend {backend.name} {backend.url} weight {backend.weight}")
        sys.stdout.flush()
        listeners = [("proxy", _url(sock.getsockname())) for sock in self.sockets]
        listeners += [("admin", _url(address)) for address in runner.addresses]
        store = "redis" if self.config.redis.url else "memory"
        log_start(self.config, store, listeners)
        log.info("%d workers serving", len(self.workers))


def supervise(
    config: Config, path: str | None = None, overrides: CommandLine = NO_OVERRIDES
) -> int:
    """Run the supervisor on the standard asyncio loop (it proxies nothing itself)."""
    return asyncio.run(Supervisor(config, path, overrides).run())
