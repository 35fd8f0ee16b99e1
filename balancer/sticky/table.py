"""The sticky table for `GET /sticky` (SPEC §3) and the re-pin of a drained backend's
sessions (`POST /backends/{name}/drain` with `{"repin": true}`).

In process, the table is the store's own entries. In Redis it is read with `SCAN` (never
`KEYS`, which blocks Redis for as long as it takes), in batches of SCAN_BATCH keys, each batch's
values and TTLs in one pipeline, each round trip bounded by `redis.timeout`; a table read stops
after SCAN_MAX keys (`"partial": true`), so no admin call holds Redis or the balancer long.
Keys are shown as the client gave them, without the mode's prefix; cookie values (the
balancer's signed cookie, the app's learned one) are cut to 8 characters: a table that an
operator pastes into a ticket must not hand out sessions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from balancer.sticky.redis_store import RedisStore
from balancer.sticky.store import MemoryStore, SessionStore

SCAN_BATCH = 1000
SCAN_MAX = 100_000  # keys read at most by one table call
REPIN_DEADLINE = 30.0  # seconds a re-pin may take in all
SHOWN = 8  # characters of a cookie value shown


@dataclass
class Table:
    store: str
    total: int = 0
    by_backend: dict[str, int] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    partial: bool = False
    available: bool = True

    def add(
        self, key: str, backend: str, expires_in: float, *, limit: int, only: str | None
    ) -> None:
        self.total += 1
        self.by_backend[backend] = self.by_backend.get(backend, 0) + 1
        if len(self.entries) < limit and (only is None or backend == only):
            self.entries.append(
                {"key": shown(key), "backend": backend, "expires_in": round(max(expires_in, 0), 3)}
            )

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "store": self.store,
            "total": self.total,
            "by_backend": dict(sorted(self.by_backend.items())),
            "entries": self.entries,
        }
        if self.partial:
            body["partial"] = True
        if not self.available:
            body["available"] = False
        return body


def shown(key: str) -> str:
    """A stored key (`mode:value`) as the client gave it; cookie values cut to SHOWN."""
    mode, _, value = key.partition(":")
    if mode in ("cookie", "learn") and len(value) > SHOWN:
        return value[:SHOWN]
    return value


def memory_table(store: MemoryStore, *, limit: int, only: str | None, kind: str) -> Table:
    table = Table(kind)
    now = store._clock()
    for key, (backend, expires) in list(store._entries.items()):
        if expires > now:
            table.add(key, backend, expires - now, limit=limit, only=only)
    return table


async def redis_table(store: RedisStore, *, limit: int, only: str | None) -> Table:
    """The mappings in Redis, or this process's copy (`available: false`) while it is away."""
    if not store.available:
        table = memory_table(store.copy, limit=limit, only=only, kind="redis")
        table.available = False
        return table
    table = Table("redis")
    prefix = store.namespace
    cursor = 0
    try:
        while True:
            async with asyncio.timeout(store.call_timeout * 4):
                cursor, keys = await _scan(store, cursor)
                if keys:
                    replies = await store._pipeline(
                        [c for key in keys for c in (("GET", key), ("PTTL", key))]
                    )
            for index, key in enumerate(keys):
                backend, ttl = replies[2 * index], replies[2 * index + 1]
                if isinstance(backend, str) and isinstance(ttl, int) and ttl >= 0:
                    table.add(key[len(prefix) :], backend, ttl / 1000, limit=limit, only=only)
            if cursor == 0:
                return table
            if table.total >= SCAN_MAX:
                table.partial = True
                return table
    except (RedisError, OSError, TimeoutError) as exc:
        store._lost(exc)
        return await redis_table(store, limit=limit, only=only)


async def read_table(store: SessionStore, *, limit: int, only: str | None) -> Table:
    if isinstance(store, RedisStore):
        return await redis_table(store, limit=limit, only=only)
    assert isinstance(store, MemoryStore)
    return memory_table(store, limit=limit, only=only, kind="memory")


async def repin(
    store: SessionStore,
    drained: str,
    choose: Callable[[], str | None],
    *,
    local_only: bool = False,
) -> int:
    """Move every session pinned to `drained` to the backend `choose()` names (the strategy's
    pick); the number moved. Bounded by REPIN_DEADLINE in all. `local_only`: Redis was done by
    another process; only this one's near cache and copy follow (they would pin the moved
    sessions to `drained` again for a while)."""
    if isinstance(store, MemoryStore):
        return _repin_memory(store, drained, choose)
    assert isinstance(store, RedisStore)
    moved = _repin_memory(store.copy, drained, choose)  # ours, for while Redis is away
    for key, (backend, _) in list(store._near._entries.items()):
        if backend == drained:
            store._near.forget(key)  # read from Redis again: where the re-pin put it
    if local_only or not store.available:
        return moved
    moved = 0
    cursor = 0
    deadline = time.monotonic() + REPIN_DEADLINE
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + REPIN_DEADLINE):
            while True:
                cursor, keys = await _scan(store, cursor)
                if keys:
                    values = await store._pipeline([("GET", key) for key in keys])
                    moves: list[tuple[str | int, ...]] = []
                    for key, value in zip(keys, values, strict=True):
                        if value == drained and (target := choose()) is not None:
                            # Only if it still points there (XX keeps its TTL window fresh).
                            moves.append(("SET", key, target, "PX", store._ttl_ms, "XX"))
                    if moves:
                        await store._pipeline(moves)
                        moved += len(moves)
                if cursor == 0 or time.monotonic() > deadline:
                    return moved
    except (RedisError, OSError, TimeoutError) as exc:
        store._lost(exc)
        return moved


def _repin_memory(store: MemoryStore, drained: str, choose: Callable[[], str | None]) -> int:
    moved = 0
    for key, (backend, _) in list(store._entries.items()):
        if backend == drained and (target := choose()) is not None:
            store.set_now(key, target)
            moved += 1
    return moved


async def _scan(store: RedisStore, cursor: int) -> tuple[int, list[str]]:
    """One SCAN step over the mappings' namespace."""
    pattern = _escape_glob(store.namespace) + "*"
    cursor, keys = await store._redis.scan(cursor, match=pattern, count=SCAN_BATCH)
    return int(cursor), [k if isinstance(k, str) else k.decode() for k in keys]


def _escape_glob(text: str) -> str:
    """SCAN's MATCH is a glob: the namespace's own `*?[]\\` taken literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
