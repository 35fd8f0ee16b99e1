"""The one door for changes to a running balancer: a reload (SIGHUP, POST /reload) today; the
membership API and discovery go through it too when they land.

A reload reads the file off the event loop, validates it in full and refuses it whole, with
every problem, when it is bad or changes what needs a restart (SPEC §6): nothing of it
applies and the old config keeps serving. Otherwise it builds the new Runtime (runtime.build),
swaps the one reference the proxy reads, and applies the Plan: health checks for the new
set, retired backends closed once their requests end, the old pool's queue handed over.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from balancer.access_log import AccessLog
from balancer.config import Config, ConfigError, Problem, load_config
from balancer.health import HealthChecker, target_of
from balancer.http.front import FrontServer
from balancer.listener import ConnectionGate
from balancer.proxy import Proxy
from balancer.registry import Registry
from balancer.runtime import Plan, Runtime, build
from balancer.sticky import Sticky, StickyCounts
from balancer.sticky.redis_store import RedisStore
from balancer.sticky.signing import CookieSigner, make_signer
from balancer.sticky.store import MemoryStore, SessionStore

log = logging.getLogger("balancer.control")

# Keys a running process cannot change: a reload that changes one is refused (SPEC §6).
RESTART_ONLY: dict[str, Callable[[Config], object]] = {
    "listen": lambda config: config.listen,
    "admin.listen": lambda config: config.admin.listen,
    "workers": lambda config: config.workers,
}
Overrides = Callable[[Config], Config]  # the command line's --workers / --log-level


def make_store(config: Config) -> SessionStore:
    """Redis when `redis.url` is set (shared by every instance), else this process."""
    if config.redis.url:
        return RedisStore(config.redis.url, config.sticky.ttl, call_timeout=config.redis.timeout)
    return MemoryStore(config.sticky.ttl)


def _store_key(config: Config) -> tuple[Any, ...]:
    """What a session store is made of: when it changes, a reload makes a new store."""
    return (config.redis.url, config.redis.timeout, config.sticky.ttl)


def restart_problems(old: Config, new: Config) -> list[Problem]:
    """One problem per restart-only key whose effective value changed."""
    problems = []
    for key, value in RESTART_ONLY.items():
        before, after = value(old), value(new)
        if before != after:
            line = new.lines.get(key)
            problems.append(Problem(key, f"needs a restart ({before} -> {after})", line))
    return problems


async def reread(
    path: str, overrides: Overrides, current: Config
) -> tuple[Config | None, tuple[str, ...]]:
    """The file as a reload would serve it, or None and every problem: it does not parse or
    validate, or it changes what needs a restart. Read and parsed off the event loop."""
    try:
        config = overrides(await asyncio.to_thread(load_config, path))
    except ConfigError as exc:
        return None, tuple(exc.lines())
    except ValueError as exc:
        return None, (str(exc),)
    problems = restart_problems(current, config)
    if problems:
        return None, tuple(p.render(config.source) for p in problems)
    return config, ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a reload did: applied (with its plan) or refused (with every problem)."""

    ok: bool
    problems: tuple[str, ...] = ()
    plan: Plan | None = None

    def as_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"reloaded": False, "problems": list(self.problems)}
        assert self.plan is not None
        return {"reloaded": True, "backends": self.plan.summary()}


class Control:
    """Holds the current Runtime and is the only thing that replaces it."""

    def __init__(
        self,
        config: Config,
        *,
        path: str | None,
        overrides: Overrides,
        registry: Registry,
        proxy: Proxy | None = None,
        quiet: bool = False,
    ) -> None:
        self.config = config
        # A worker's: its supervisor logs each reload once for the whole balancer.
        self._reloaded_level = logging.DEBUG if quiet else logging.INFO
        self.path = path
        self._watched = os.path.abspath(path) if path is not None else ""
        self.overrides = overrides
        self.registry = registry
        self.proxy = proxy
        self.store: SessionStore = make_store(config)
        self._signer: CookieSigner | None = None
        self.front: FrontServer | None = None
        self.gate: ConnectionGate | None = None
        self.health: HealthChecker | None = None
        self.access: AccessLog | None = None
        self.sticky_counts = StickyCounts()  # across reloads and store changes
        self.runtime: Runtime | None = None
        self._lock = asyncio.Lock()  # one reload at a time
        self.reloads_ok = 0
        self.reloads_failed = 0

    async def first(self) -> Runtime:
        """The Runtime of the config the process started with."""
        if isinstance(self.store, RedisStore):
            await self.store.connect()  # never blocks start: a Redis that is down is retried
        runtime, _ = build(self.config, self.registry, None, sticky=await self._sticky(self.config))
        self.registry.adopt(runtime.pool.backends, ())
        self.runtime = runtime
        return runtime

    async def _sticky(self, config: Config) -> Sticky | None:
        if config.sticky.mode == "off":
            return None
        signer = None
        if config.sticky.mode == "cookie":  # before serving: SPEC §2 loads the secret first
            if self._signer is None or self.config.sticky.secret != config.sticky.secret:
                self._signer = await make_signer(config.sticky.secret, self.store)
            signer = self._signer
        return Sticky(config.sticky, self.store, signer, self.sticky_counts)

    async def watch(self, stop: asyncio.Event) -> None:
        """`watch: true`: reload whenever the file changes, until `stop` (or `watch` turns
        false in a reload). The directory is watched, so an editor that saves by renaming a
        new file over the old one is seen too."""
        import watchfiles

        if self.path is None:
            return
        target = self._watched

        def ours(change: watchfiles.Change, path: str) -> bool:
            return os.path.abspath(path) == target

        log.info("watching %s: a change reloads it", self.path)
        async for _ in watchfiles.awatch(
            os.path.dirname(target), watch_filter=ours, stop_event=stop, debounce=200
        ):
            log.info("%s changed: reloading", self.path)
            await self.reload()
            if not self.config.watch:
                log.info("watch is off now: no longer watching %s", self.path)
                return

    async def reload(self) -> Outcome:
        """Re-read the file and serve it, or refuse it whole and say why."""
        async with self._lock:
            outcome = await self._reload()
        if outcome.ok:
            self.reloads_ok += 1
            assert outcome.plan is not None
            log.log(self._reloaded_level, "reloaded %s: %s", self.path, outcome.plan.summary())
        else:
            self.reloads_failed += 1
            log.warning(
                "reload refused, the old config keeps serving:\n  %s",
                "\n  ".join(outcome.problems),
            )
        return outcome

    async def _reload(self) -> Outcome:
        if self.path is None:
            return Outcome(False, ("no file to reload: the config was not read from one",))
        config, problems = await reread(self.path, self.overrides, self.config)
        if config is None:
            return Outcome(False, problems)
        return await self.apply(config)

    async def apply(self, config: Config) -> Outcome:
        """Serve `config` from now on: build, swap, then apply the plan."""
        old_store = None
        if _store_key(config) != _store_key(self.config):
            old_store, self.store = self.store, make_store(config)
            self._signer = None
            if isinstance(self.store, RedisStore):
                await self.store.connect()
        previous = self.runtime
        runtime, plan = build(config, self.registry, previous, sticky=await self._sticky(config))
        # The swap: every request from now on reads the new Runtime.
        self.runtime = runtime
        self.config = config
        if self.proxy is not None:
            self.proxy.runtime = runtime
        self.registry.adopt(runtime.pool.backends, plan.retired)
        if previous is not None:
            previous.pool.succeeded_by(runtime.pool)
        if self.front is not None:
            self.front.configure(config.limits, config.timeouts)
        if self.gate is not None:
            self.gate.set_cap(config.limits.max_connections)
        if self.health is not None:
            self.health.sync(map(target_of, runtime.pool.backends), config.health_check)
        if self.access is not None:
            self._access_log(config)
        _set_log_level(config.log_level)
        if self.proxy is not None:
            self.proxy.debug = logging.getLogger("balancer.proxy").isEnabledFor(logging.DEBUG)
        if old_store is not None:
            await old_store.close()
        return Outcome(True, plan=plan)

    def _access_log(self, config: Config) -> None:
        """A reload's access_log: format and path; the file is reopened (as on SIGUSR1), and
        lines are written, or not, from the next request on."""
        access = self.access
        assert access is not None
        access.configure(config.access_log.format, config.access_log.path)
        if self.proxy is not None:
            self.proxy.access = access if access.on else None

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log's file (log rotation)."""
        if self.access is not None:
            log.info("SIGUSR1: reopening the access log %s", self.access.path)
            self.access.reopen()


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level)
