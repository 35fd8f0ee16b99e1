"""`workers: N` (SPEC §6): a supervisor binds the proxy's listening sockets once, starts N
workers on them, restarts one that dies, passes signals on, and serves the one admin port.

The shape of gunicorn's arbiter and uvicorn's multiprocess supervisor: signal handlers only
put an event on a queue, and one loop (`_dispatch`) makes every decision, so a signal, a death
and a restart never race. Each worker is a fresh interpreter (`python -m balancer.worker`)
that inherits the sockets (`pass_fds`) and runs `serve()` on them; it is in a process group
of its own, so a terminal's Ctrl+C reaches the supervisor alone, which passes one SIGTERM on
(two, Ctrl+C twice, cut the requests in flight as in one process).
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

from balancer.config import Config
from balancer.http.admin_server import AdminRunner
from balancer.listener import bind
from balancer.supervisor_admin import WorkerAdmin, make_supervisor_app
from balancer.worker import exited, listening, start_worker

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
    ready: bool = False
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
    def __init__(self, config: Config) -> None:
        self.config = config
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.directory = tempfile.mkdtemp(prefix="balancer-")  # 0700: ours alone
        self.workers = [
            Worker(i, os.path.join(self.directory, f"worker-{i}.sock"))
            for i in range(config.workers)
        ]
        self.admin = WorkerAdmin(config, lambda: self.workers)
        self.sockets: list[socket.socket] = []
        self.announced = False
        self.stopping = False
        self.status = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.events.put_nowait, sig)
        runner = AdminRunner(
            make_supervisor_app(self.admin),
            limits=self.config.limits,
            timeouts=self.config.timeouts,
            handle_signals=False,
        )
        await runner.setup()
        try:
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
            for worker in self.workers:
                await self._spawn(worker)
            await self._dispatch(runner)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._kill_all()
            await self.admin.close()
            await runner.cleanup()
            for sock in self.sockets:
                sock.close()
            shutil.rmtree(self.directory, ignore_errors=True)
        log.info("stopped")
        return self.status

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
        if sig == signal.SIGHUP:
            log.info("SIGHUP: passing it on to every worker")
            self.admin.reloaded = True
            self._send_all(signal.SIGHUP)
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
        process = await start_worker(self.config, worker.index, self.sockets, worker.admin_path)
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
        if up:
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

    def _announce(self, runner: web.BaseRunner) -> None:
        """The lines one process prints, once, for the whole balancer."""
        for sock in self.sockets:
            print(f"proxy listening on {_url(sock.getsockname())}")
        for address in runner.addresses:
            print(f"admin listening on {_url(address)}")
        for backend in self.config.backends:
            print(f"backend {backend.name} {backend.url} weight {backend.weight}")
        sys.stdout.flush()
        log.info(
            "%d workers serving %s, admin on %s",
            len(self.workers),
            ", ".join(_url(sock.getsockname()) for sock in self.sockets),
            ", ".join(_url(address) for address in runner.addresses),
        )


def supervise(config: Config) -> int:
    """Run the supervisor on the standard asyncio loop (it proxies nothing itself)."""
    return asyncio.run(Supervisor(config).run())
