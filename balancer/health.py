"""Active health checks (SPEC §2): one probe loop per backend, results through rise/fall.

Each backend has its own loop, so probes to different backends run concurrently and never two
to the same one; a probe that is still running delays the next (timeout may exceed interval).
The first probe runs at once; later ones are spread by +-10% jitter so that many balancers do
not probe in step. A probe is `GET health_check.path` with the backend's `host:port` as Host;
2xx and 3xx pass. Its body or an X-Backend-Load header reports the backend's load (load.py).
A probe that raises anything, the balancer's own exceptions included, is a failed probe: the
loop never dies (SPEC §2). One exception: a probe the balancer could not make for lack of its
own resources (LocalResourceError: no fd for the socket) is skipped, neither passed nor failed.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from balancer.backend import Backend, Health
from balancer.config import HealthCheckConfig
from balancer.errors import LocalResourceError, ProxyError
from balancer.histogram import Histogram
from balancer.load import parse_load
from balancer.upstream_pool import UpstreamPool

log = logging.getLogger("balancer.health")

MAX_PROBE_BODY = 64 * 1024
JITTER = 0.1


@dataclass(slots=True)
class RiseFall:
    """Consecutive-result counting: `fall` failures mark a healthy backend unhealthy, `rise`
    passes mark an unhealthy one healthy. Pure: `observe` returns the new health or None."""

    rise: int
    fall: int
    healthy: bool = True
    streak: int = 0  # consecutive results against the current health

    def observe(self, passed: bool) -> Health | None:
        if passed == self.healthy:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < (self.fall if self.healthy else self.rise):
            return None
        self.healthy, self.streak = passed, 0
        return "healthy" if passed else "unhealthy"


@dataclass(slots=True)
class ProbeResult:
    passed: bool
    detail: str
    cpu: float | None = None
    memory: float | None = None
    #: Neither a pass nor a failure: the probe could not be made (LocalResourceError).
    skipped: bool = False


async def probe(pool: UpstreamPool, path: str, deadline: float) -> ProbeResult:
    """One health probe over a fresh connection (never the request pool's), within `deadline`
    seconds in all: connect, head and body."""
    head = f"GET {path} HTTP/1.1\r\nHost: {pool.address}\r\nConnection: close\r\n"
    head += "User-Agent: balancer-health-check\r\n\r\n"
    conn = None
    try:
        async with asyncio.timeout(deadline):
            conn = await pool.connect()
            conn.send_head(head.encode("latin-1"), "GET")
            response = await conn.read_head()
            body = b""
            while len(body) < MAX_PROBE_BODY and (chunk := await conn.read_chunk()):
                body += chunk
    except TimeoutError:
        return ProbeResult(False, f"no answer within {deadline:g}s")
    except LocalResourceError as exc:
        # The balancer's own exhaustion (no fd for the socket) says nothing of the backend:
        # counting it marked every healthy backend down when client connections used up the
        # fds. The probe is skipped, neither passed nor failed.
        return ProbeResult(False, f"skipped: {exc.detail}", skipped=True)
    except ProxyError as exc:
        return ProbeResult(False, exc.detail or str(exc))
    finally:
        if conn is not None:
            conn.close()
    load_header = next((v for n, v in response.raw_headers if n.lower() == b"x-backend-load"), None)
    cpu, memory = parse_load(body, load_header)
    passed = 200 <= response.status < 400
    return ProbeResult(passed, f"status {response.status}", cpu, memory)


class ProbeStats:
    """One backend's probes since start, for /metrics: results and a duration histogram."""

    __slots__ = ("durations", "results")

    def __init__(self) -> None:
        self.results = {"pass": 0, "fail": 0, "skipped": 0}
        self.durations = Histogram()

    def record(self, result: ProbeResult, seconds: float) -> None:
        outcome = "skipped" if result.skipped else "pass" if result.passed else "fail"
        self.results[outcome] += 1
        if not result.skipped:
            self.durations.record(seconds)


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """What a probe loop probes: a backend's name and address (a new url is a new target)."""

    name: str
    host: str
    port: int
    use_tls: bool


def target_of(backend: Backend) -> ProbeTarget:
    upstream = backend.upstream
    return ProbeTarget(backend.name, upstream.host, upstream.port, upstream.use_tls)


class HealthSink(Protocol):
    """Where probe results go: this process's backends, or (a supervisor) every worker's."""

    def healthy(self, target: ProbeTarget) -> bool:
        """The health a (re)started loop's rise/fall count starts from."""
        ...

    def report(self, target: ProbeTarget, result: ProbeResult, health: Health) -> None:
        """One probe's result and the health it leaves the backend in."""
        ...


def apply_probe(backend: Backend, result: ProbeResult, health: Health) -> None:
    """A probe's result on one backend: its reported load, its last check, its breaker (rise
    passes shorten an open one, SPEC §2) and its health."""
    backend.report_load(result.cpu, result.memory)
    backend.last_check = result.detail
    if backend.breaker is not None and not result.skipped:
        backend.breaker.probe_result(result.passed)
    backend.set_health(health)


class LocalHealth:
    """One process: the results go straight to its own backends."""

    def __init__(self, backends: Callable[[], Mapping[str, Backend]]) -> None:
        self._backends = backends

    def healthy(self, target: ProbeTarget) -> bool:
        backend = self._backends().get(target.name)
        return backend is None or backend.health == "healthy"

    def report(self, target: ProbeTarget, result: ProbeResult, health: Health) -> None:
        backend = self._backends().get(target.name)
        if backend is not None and target_of(backend) == target:
            apply_probe(backend, result, health)


def _ended(task: asyncio.Task[None]) -> None:
    """A probe loop only ends by stop(); should one ever end otherwise, say so loudly."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("health checks stopped: %s", exc, exc_info=exc)


class HealthChecker:
    """One probe loop per target; with workers the supervisor runs the only one, so each
    backend is probed once per interval for the whole balancer (SPEC §6)."""

    def __init__(
        self,
        targets: Iterable[ProbeTarget],
        config: HealthCheckConfig,
        sink: HealthSink,
        *,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._targets = tuple(targets)
        self._sink = sink
        self._loop = loop
        self._rng = rng or random.Random()
        self._tasks: dict[ProbeTarget, asyncio.Task[None]] = {}  # one probe loop per target
        self.stats: dict[str, ProbeStats] = {}  # per backend name (those probed now)

    def start(self) -> None:
        self.sync(self._targets, self.config)

    def sync(self, targets: Iterable[ProbeTarget], config: HealthCheckConfig) -> None:
        """Probe exactly `targets` with `config` (a reload): loops of targets that left
        stop, new ones get one; new settings restart every loop (each keeps its backend's
        health: the rise/fall count starts from it)."""
        targets = tuple(targets)
        if config != self.config:
            self.config = config
            self._cancel(list(self._tasks))
        self._targets = targets
        self._cancel([t for t in self._tasks if t not in targets])
        names = {t.name for t in targets}
        self.stats = {name: self.stats.get(name) or ProbeStats() for name in names}
        for target in targets:
            if target not in self._tasks:
                task = self._loop.create_task(self._run(target))
                task.add_done_callback(_ended)
                self._tasks[target] = task

    def _cancel(self, targets: list[ProbeTarget]) -> None:
        for target in targets:
            self._tasks.pop(target).cancel()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = {}

    async def _run(self, target: ProbeTarget) -> None:
        config = self.config
        pool = UpstreamPool(
            target.host,
            target.port,
            use_tls=target.use_tls,
            connect_timeout=config.timeout,
            read_timeout=config.timeout,
            loop=self._loop,
        )
        counter = RiseFall(config.rise, config.fall, healthy=self._sink.healthy(target))
        last_error = ""
        skipping = False  # logged at warning once a run of skipped probes starts
        stats = self.stats.setdefault(target.name, ProbeStats())
        while True:
            began = self._loop.time()
            try:
                result = await probe(pool, config.path, config.timeout)
            except Exception as exc:  # SPEC §2: a probe that fails in any way
                # Our own bug or a backend answer we choke on is a failed probe, and probing
                # goes on; logged when it first happens and again only when it changes.
                result = ProbeResult(False, f"failed: {type(exc).__name__}: {exc}"[:300])
                if result.detail != last_error:
                    log.warning("backend %s: health check %s", target.name, result.detail)
                    last_error = result.detail
            else:
                last_error = ""
            stats.record(result, self._loop.time() - began)
            if result.skipped:
                level = logging.DEBUG if skipping else logging.WARNING
                log.log(level, "health check of %s %s", target.name, result.detail)
            skipping = result.skipped
            verdict = None if result.skipped else counter.observe(result.passed)
            if verdict is not None:
                # Going down is worth a warning; coming back is routine (INFO).
                level = logging.WARNING if verdict == "unhealthy" else logging.INFO
                detail = result.detail
                log.log(level, "backend %s is %s: health check %s", target.name, verdict, detail)
            self._sink.report(target, result, "healthy" if counter.healthy else "unhealthy")
            await asyncio.sleep(config.interval * self._rng.uniform(1 - JITTER, 1 + JITTER))
