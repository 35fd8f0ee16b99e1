"""Backends by name, living across rebuilds of the Runtime (live reload, and later the
membership API and discovery).

A backend that stays in the file (same name, same url) keeps its stats, breaker, health state
and pooled connections; `runtime.build` hands it the file's new settings (`configure`). A
backend that leaves is retired: it takes no new requests (it is in no Runtime's pool) and is
closed once its last request in flight ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from balancer.backend import Backend, RequestStats
from balancer.breaker import Breaker, BreakerState
from balancer.config import BackendConfig, Config
from balancer.upstream_pool import UpstreamPool

log = logging.getLogger("balancer.registry")


#: Told when a backend's breaker opens or closes here (a worker tells its supervisor).
BreakerHook = Callable[[str, BreakerState], None]


def new_backend(
    config: Config,
    bc: BackendConfig,
    loop: asyncio.AbstractEventLoop,
    on_breaker: BreakerHook | None = None,
) -> Backend:
    upstream = UpstreamPool(
        bc.host,
        bc.port,
        use_tls=bc.scheme == "https",
        connect_timeout=config.timeouts.connect,
        read_timeout=config.timeouts.read,
        loop=loop,
        idle_timeout=config.timeouts.upstream_idle,
    )
    breaker_config = config.circuit_breaker
    backend = Backend(bc, upstream, failure_statuses=frozenset(breaker_config.failure_statuses))
    backend.breaker = Breaker(
        bc.name,
        breaker_config.failure_threshold,
        breaker_config.reset_timeout,
        loop=loop,
        on_change=backend.breaker_changed,
        rise=config.health_check.rise,
        on_transition=None if on_breaker is None else lambda state: on_breaker(bc.name, state),
    )
    return backend


def configure(backend: Backend, config: Config, bc: BackendConfig) -> None:
    """The file's settings for a backend that stays: weight, caps, timeouts, breaker rules."""
    backend.config = bc
    backend.weight = bc.weight
    backend.failure_statuses = frozenset(config.circuit_breaker.failure_statuses)
    upstream = backend.upstream
    upstream.connect_timeout = config.timeouts.connect
    upstream.read_timeout = config.timeouts.read
    upstream.idle_timeout = config.timeouts.upstream_idle
    if backend.breaker is not None:
        backend.breaker.configure(
            config.circuit_breaker.failure_threshold,
            config.circuit_breaker.reset_timeout,
            config.health_check.rise,
        )
    backend.refresh()


def same_target(backend: Backend, bc: BackendConfig) -> bool:
    return backend.url == bc.url


class Registry:
    """Every backend by name, and those retiring (removed, with requests still in flight)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_breaker: BreakerHook | None = None
    ) -> None:
        self.loop = loop
        self.on_breaker = on_breaker
        self.backends: dict[str, Backend] = {}
        self.retiring: set[Backend] = set()
        # Requests answered without any backend (503): the balancer's, whatever the Runtime.
        self.unrouted = RequestStats()

    def __repr__(self) -> str:
        return f"<Registry [{len(self.backends)} backends, {len(self.retiring)} retiring]>"

    def adopt(self, backends: tuple[Backend, ...], retired: tuple[Backend, ...]) -> None:
        """Make `backends` the live set and retire those the rebuild left out (its Plan)."""
        self.backends = {b.name: b for b in backends}
        for backend in retired:
            self.retire(backend)

    def retire(self, backend: Backend) -> None:
        """No new requests reach it: the new Runtime's pool does not hold it, and disabling
        it takes it out of the old pool too (a retry of a request still on the old Runtime
        goes to another backend of that pool). It closes when its last request ends."""
        backend.set_mode("disabled")  # the old pool rebuilds without it
        backend.on_change(_nothing)
        if backend.in_flight == 0:
            self._close(backend)
            return
        self.retiring.add(backend)
        backend.on_slot_freed(lambda: self._maybe_close(backend))

    def _maybe_close(self, backend: Backend) -> None:
        if backend.in_flight == 0 and backend in self.retiring:
            self.retiring.discard(backend)
            self._close(backend)

    def _close(self, backend: Backend, *, retired: bool = True) -> None:
        if retired:
            log.info("backend %s retired", backend.name)
        backend.upstream.close()
        if backend.breaker is not None:
            backend.breaker.close()

    def close(self) -> None:
        for backend in [*self.backends.values(), *self.retiring]:  # the process stops
            self._close(backend, retired=False)
        self.retiring.clear()


def _nothing() -> None:
    return None
