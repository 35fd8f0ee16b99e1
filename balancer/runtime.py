"""The Runtime: everything a request reads, as one frozen snapshot, built by ONE function.

`build(config, registry, previous)` makes the Runtime of a config: the pool of its backends
(from the registry: a backend that stays keeps its state), the strategy, the sticky layer and
the request path's settings; and the Plan of what changes against `previous`. The control door
(control.py) swaps the one reference the proxy reads; a request reads it once, at its start,
and finishes on the Runtime it started with (a reload never shows it two pools).

This is the only place where configuration is copied into long-lived objects (the registry's
backends, by `registry.configure`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from balancer.backend import Backend
from balancer.config import Config
from balancer.pool import Pool
from balancer.registry import Registry, configure, new_backend, same_target
from balancer.request_key import key_getter
from balancer.retry_budget import RetryBudget
from balancer.sticky import Sticky
from balancer.strategies import make_strategy, needs_key

KeyGetter = Callable[[web.BaseRequest], bytes | None]


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the request path reads, for one config."""

    config: Config
    pool: Pool
    retry_budget: RetryBudget
    sticky: Sticky | None
    request_key: KeyGetter | None  # what consistent_hash hashes, when it is the strategy
    retry_after: str  # Retry-After on a 503: health_check.interval, at least 1 s
    retries: int
    max_body: int
    client_body_timeout: float
    client_send_timeout: float
    tunnel_idle_timeout: float
    proto: str = "http"


@dataclass(frozen=True, slots=True)
class Plan:
    """What a rebuild changes: backends added, kept (their settings may have changed) and
    retired (removed, or whose url changed)."""

    added: tuple[Backend, ...] = ()
    kept: tuple[Backend, ...] = ()
    retired: tuple[Backend, ...] = ()

    def summary(self) -> dict[str, list[str]]:
        return {
            "added": [b.name for b in self.added],
            "kept": [b.name for b in self.kept],
            "removed": [b.name for b in self.retired],
        }


def build(
    config: Config,
    registry: Registry,
    previous: Runtime | None,
    *,
    sticky: Sticky | None,
) -> tuple[Runtime, Plan]:
    """The Runtime of `config` over the registry's backends, and what it changes."""
    added: list[Backend] = []
    kept: list[Backend] = []
    backends: list[Backend] = []
    for bc in config.backends:
        backend = registry.backends.get(bc.name)
        if backend is not None and same_target(backend, bc):
            configure(backend, config, bc)
            kept.append(backend)
        else:
            backend = new_backend(config, bc, registry.loop, registry.on_breaker)
            added.append(backend)
        backends.append(backend)
    retired = tuple(b for b in registry.backends.values() if b not in backends)
    strategy = make_strategy(config.strategy, adaptive=config.adaptive)
    pool = Pool(
        tuple(backends),
        strategy,
        slow_start=config.slow_start,
        queue_size=config.queue.size,
        queue_timeout=config.queue.timeout,
    )
    budget = config.retry_budget
    retry_budget = RetryBudget(budget.percent, budget.min_concurrency)
    if previous is not None and previous.config.retry_budget == budget:
        retry_budget = previous.retry_budget  # its count of retries in flight goes on
    runtime = Runtime(
        config=config,
        pool=pool,
        retry_budget=retry_budget,
        sticky=sticky,
        request_key=key_getter(config.hash.on, config.hash.name) if needs_key(strategy) else None,
        retry_after=str(max(1, math.ceil(config.health_check.interval))),
        retries=config.retries,
        max_body=config.limits.max_body,
        client_body_timeout=config.timeouts.client_body,
        client_send_timeout=config.timeouts.client_send,
        tunnel_idle_timeout=config.timeouts.tunnel_idle,
    )
    return runtime, Plan(tuple(added), tuple(kept), retired)
