"""Where sticky mappings live: key -> backend name, with a sliding TTL (SPEC §2).

`SessionStore` is what the sticky layer needs; `MemoryStore` is the in-process one (the
default, and the fallback while Redis is away); `RedisStore` (redis_store.py) shares mappings
between every process and instance.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol


class SessionStore(Protocol):
    kind: str  # "memory" | "redis"

    @property
    def available(self) -> bool: ...

    async def get(self, key: str) -> str | None:
        """The backend name mapped to `key`, refreshing its TTL; None when unknown."""
        ...

    async def set(self, key: str, backend: str) -> None:
        """Map `key` to `backend` for the TTL."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """An LRU of mappings in this process, bounded by `max_entries`, expiring after `ttl`
    seconds without use (or, not `sliding`, `ttl` seconds after they were set)."""

    kind = "memory"
    available = True

    def __init__(
        self,
        ttl: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        sliding: bool = True,
    ) -> None:
        self.ttl = ttl
        self.sliding = sliding
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        backend, expires = entry
        now = self._clock()
        if expires <= now:
            del self._entries[key]
            return None
        if self.sliding:
            self._entries[key] = (backend, now + self.ttl)
            self._entries.move_to_end(key)
        return backend

    def set_now(self, key: str, backend: str) -> None:
        self._entries[key] = (backend, self._clock() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get(self, key: str) -> str | None:
        return self.get_now(key)

    async def set(self, key: str, backend: str) -> None:
        self.set_now(key, backend)

    async def close(self) -> None:
        self._entries.clear()
