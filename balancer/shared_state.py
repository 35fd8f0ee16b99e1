"""The supervisor's half of what workers share (SPEC §6; the events are peer_link's).

It runs the balancer's one health checker, so each backend is probed once per interval
whatever the number of workers, and sends every result to every worker. A worker whose
breaker opens or closes posts it here (on the supervisor's private Unix socket), and it goes
on to every other worker: a breaker is the balancer's. Half-open is each worker's own, by its
timer (the same reset_timeout from about the same moment) or by the passing probes every
worker hears; each worker then lets one trial through, and the first outcome, passed on,
closes or reopens the breaker everywhere.

It remembers where each backend stands (its last probe, its last shared breaker state), so
that a worker that (re)starts takes it on before it listens and again once it does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web

from balancer.config import Config
from balancer.health import HealthChecker, ProbeResult, ProbeTarget
from balancer.peer_link import BadEvent, Event, Outbox, parse_events, probe_event

log = logging.getLogger("balancer.supervisor")


class Peer(Protocol):
    index: int
    listening: bool  # its admin socket answers


def targets_of(config: Config) -> list[ProbeTarget]:
    return [ProbeTarget(b.name, b.host, b.port, b.scheme == "https") for b in config.backends]


class SharedState:
    def __init__(
        self,
        config: Config,
        workers: Callable[[], Sequence[Peer]],
        send: Callable[[Peer, bytes], Awaitable[bool]],
        *,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._workers = workers
        self._send = send  # async (worker, body) -> bool: POST /peer/events to it
        self._outboxes: dict[int, Outbox] = {}
        self.states: dict[ProbeTarget, Event] = {}  # each backend's last probe, as a state
        self.breakers: dict[str, str] = {}  # each backend's last shared breaker state
        self.checker = HealthChecker(targets_of(config), config.health_check, self, loop=loop)

    # --- the health checker's sink ------------------------------------------------------------

    def healthy(self, target: ProbeTarget) -> bool:
        state = self.states.get(target)
        return state is None or state["health"] == "healthy"

    def report(self, target: ProbeTarget, result: ProbeResult, health: str) -> None:
        event = probe_event(target.name, result, health)
        self.states[target] = {k: v for k, v in event.items() if k != "passed"} | {"kind": "state"}
        self.broadcast(event)

    # --- workers ----------------------------------------------------------------------------

    def snapshot(self) -> list[Event]:
        """Where every backend stands, as events a new worker takes on."""
        events = list(self.states.values())
        events += [
            {"kind": "breaker", "backend": name, "state": state}
            for name, state in self.breakers.items()
        ]
        return events

    def broadcast(self, event: Event, *, but: int | None = None) -> None:
        for worker in self._workers():
            if worker.listening and worker.index != but:
                self._outbox(worker).put(event)

    def joined(self, worker: Peer) -> None:
        """It listens now: bring it up to date (what it got at start may be old by now)."""
        outbox = self._outbox(worker)
        outbox.clear()
        outbox.put(*self.snapshot())

    def left(self, worker: Peer) -> None:
        self._outbox(worker).clear()

    def _outbox(self, worker: Peer) -> Outbox:
        outbox = self._outboxes.get(worker.index)
        if outbox is None:

            async def send(body: bytes) -> bool:
                return await self._send(worker, body)

            outbox = Outbox(send, f"worker {worker.index}")
            self._outboxes[worker.index] = outbox
        return outbox

    # --- reload and lifetime -------------------------------------------------------------------

    def start(self) -> None:
        self.checker.start()

    def sync(self, config: Config) -> None:
        """After a reload: probe the new set; forget backends that left."""
        targets = targets_of(config)
        self.checker.sync(targets, config.health_check)
        self.states = {t: s for t, s in self.states.items() if t in targets}
        names = {t.name for t in targets}
        self.breakers = {n: s for n, s in self.breakers.items() if n in names}

    async def stop(self) -> None:
        await self.checker.stop()
        for outbox in self._outboxes.values():
            await outbox.close()

    def make_app(self) -> web.Application:
        """What workers post to: their breakers' transitions."""

        async def events(request: web.Request) -> web.Response:
            try:
                sender = int(request.query.get("worker", ""))
                batch = parse_events(await request.read())
                if any(event["kind"] != "breaker" for event in batch):
                    raise BadEvent("a worker sends breaker events only")
            except (ValueError, BadEvent) as exc:
                return web.json_response({"error": f"bad events: {exc}"}, status=400)
            for event in batch:
                self.breakers[event["backend"]] = event["state"]
                self.broadcast(event, but=sender)
            return web.json_response({"taken": len(batch)})

        app = web.Application()
        app.router.add_post("/events", events)
        return app
