"""What the workers of one balancer share through their supervisor (SPEC §6): health and
breakers.

The supervisor probes every backend once per interval for the whole balancer and sends each
result to every worker; a worker whose breaker opens or closes tells the supervisor, which
tells the other workers, so a breaker is the balancer's, not a worker's. Both directions
carry a JSON list of events over the private Unix sockets (a directory only we can enter):

    {"kind": "probe", "backend": NAME, "passed": BOOL, "detail": STR, "cpu": X, "memory": X,
     "health": "healthy" | "unhealthy"}     a probe's result and the health it leaves
    {"kind": "state", ...the same without "passed"}   where a backend stands (to a new worker)
    {"kind": "breaker", "backend": NAME, "state": "open" | "closed"}

Events are idempotent but for `probe` (a pass counts towards shortening an open breaker), so
a worker that (re)starts gets `state` events: what it missed, never counted twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from balancer.backend import Backend
from balancer.breaker import BreakerState
from balancer.health import ProbeResult, apply_probe

log = logging.getLogger("balancer.peers")

Event = dict[str, Any]
SEND_TIMEOUT = 2.0  # seconds for the other end to take one batch
HEALTH = ("healthy", "unhealthy")
SHARED_BREAKER_STATES = ("open", "closed")


class BadEvent(ValueError):
    pass


def _field(event: Mapping[str, Any], key: str, *kinds: type) -> Any:
    value = event.get(key)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadEvent(f"{key}: expected {names}, got {value!r}")
    return value


def parse_events(body: bytes) -> list[Event]:
    """The events of one batch, each checked; BadEvent says what is wrong with the first."""
    try:
        events = json.loads(body)
    except ValueError as exc:
        raise BadEvent(f"not JSON: {exc}") from None
    if not isinstance(events, list):
        raise BadEvent("expected a JSON list of events")
    for event in events:
        if not isinstance(event, dict):
            raise BadEvent(f"expected an object, got {event!r}")
        kind = event.get("kind")
        _field(event, "backend", str)
        if kind == "breaker":
            if event.get("state") not in SHARED_BREAKER_STATES:
                raise BadEvent(f"state: expected open or closed, got {event.get('state')!r}")
        elif kind in ("probe", "state"):
            if (health := event.get("health")) not in HEALTH:
                raise BadEvent(f"health: expected healthy or unhealthy, got {health!r}")
            _field(event, "detail", str)
            for key in ("cpu", "memory"):
                if event.get(key) is not None:
                    _field(event, key, int, float)
            if kind == "probe":
                _field(event, "passed", bool)
        else:
            raise BadEvent(f"kind: expected probe, state or breaker, got {kind!r}")
    return events


def probe_event(name: str, result: ProbeResult, health: str) -> Event:
    kind = "state" if result.skipped else "probe"
    event: Event = {"kind": kind, "backend": name, "detail": result.detail, "health": health}
    event.update(cpu=result.cpu, memory=result.memory)
    if kind == "probe":
        event["passed"] = result.passed
    return event


def apply_events(backends: Mapping[str, Backend], events: list[Event]) -> None:
    """Events from the supervisor on this worker's backends (one it no longer has, after a
    reload, is skipped)."""
    for event in events:
        backend = backends.get(event["backend"])
        if backend is None:
            continue
        if event["kind"] == "breaker":
            if backend.breaker is not None:
                backend.breaker.adopt(event["state"])
            continue
        passed = bool(event.get("passed"))
        skipped = event["kind"] == "state"  # not a probe: the breaker counts nothing
        result = ProbeResult(passed, event["detail"], event["cpu"], event["memory"], skipped)
        apply_probe(backend, result, event["health"])


class Outbox:
    """Events for one peer, sent in order, in batches: whatever queued while the previous
    batch was on its way goes as the next one. A batch the peer does not take (restarting)
    is dropped: a peer that comes back is brought up to date as a whole."""

    def __init__(self, send: Callable[[bytes], Awaitable[bool]], what: str) -> None:
        self._send = send
        self._what = what
        self._queue: list[Event] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def put(self, *events: Event) -> None:
        self._queue.extend(events)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def clear(self) -> None:
        self._queue.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            ok = await self._send(json.dumps(batch).encode())
            if ok == self._failing:  # logged when it starts failing and when it stops
                self._failing = not ok
                level = logging.WARNING if not ok else logging.INFO
                log.log(level, "%s %s", self._what, "unreachable" if not ok else "reachable again")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


class SupervisorLink:
    """A worker's line to its supervisor: this worker's breaker transitions go up."""

    def __init__(self, path: str, index: int) -> None:
        self.index = index
        self._path = path
        self._session: aiohttp.ClientSession | None = None
        self._outbox = Outbox(self._post, "the supervisor")

    def breaker_changed(self, name: str, state: BreakerState) -> None:
        if state in SHARED_BREAKER_STATES:
            self._outbox.put({"kind": "breaker", "backend": name, "state": state})

    async def _post(self, body: bytes) -> bool:
        if self._session is None:
            connector = aiohttp.UnixConnector(path=self._path, force_close=True)
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        url = f"http://supervisor/events?worker={self.index}"
        try:
            async with self._session.post(
                url, data=body, timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def close(self) -> None:
        await self._outbox.close()
        if self._session is not None:
            await self._session.close()
