"""Where sticky mappings live: key -> backend name, with a sliding TTL (SPEC §2).

`SessionStore` is what the sticky layer needs; `MemoryStore` is the in-process one (the
default, and the process' own copy beside Redis); `RedisStore` (redis_store.py) shares
mappings between every process and instance.

Both are bounded by entries and by bytes (SPEC §2): the bytes counted are the key's and the
backend name's (UTF-8). Python's own overhead per entry (~200 bytes: the dict slot, a tuple,
a float, two str headers) is bounded by `max_entries`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

DEFAULT_MAX_ENTRIES = 100_000
# 32 MiB of keys and names. Measured: 100,000 entries of the longest keys allowed (256 bytes,
# sticky.MAX_KEY_BYTES) count 25 MiB (49 MiB of RSS); 100,000 cookie-mode entries count 5 MiB
# (30 MiB of RSS). So the entry bound binds first for every key the sticky layer stores, and
# this one is the backstop against long values (backend names) or a raised key cap.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


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


def entry_bytes(key: str, backend: str) -> int:
    """What an entry counts against `max_bytes`: its key and value in UTF-8."""
    size = len(key) if key.isascii() else len(key.encode("utf-8", "surrogateescape"))
    return size + (len(backend) if backend.isascii() else len(backend.encode("utf-8")))


class MemoryStore:
    """An LRU of mappings in this process, bounded by `max_entries` and `max_bytes` (the least
    recently used go first when either is passed), expiring after `ttl` seconds without use
    (or, not `sliding`, `ttl` seconds after they were set)."""

    kind = "memory"
    available = True

    def __init__(
        self,
        ttl: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sliding: bool = True,
    ) -> None:
        self.ttl = ttl
        self.sliding = sliding
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0  # entry_bytes of every entry held
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
            self.bytes -= entry_bytes(key, backend)
            return None
        if self.sliding:
            self._entries[key] = (backend, now + self.ttl)
            self._entries.move_to_end(key)
        return backend

    def set_now(self, key: str, backend: str) -> None:
        entries = self._entries
        old = entries.get(key)
        if old is not None:
            self.bytes -= entry_bytes(key, old[0])
        entries[key] = (backend, self._clock() + self.ttl)
        entries.move_to_end(key)
        self.bytes += entry_bytes(key, backend)
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            evicted, (name, _) = entries.popitem(last=False)
            self.bytes -= entry_bytes(evicted, name)

    def forget(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry_bytes(key, entry[0])

    async def get(self, key: str) -> str | None:
        return self.get_now(key)

    async def set(self, key: str, backend: str) -> None:
        self.set_now(key, backend)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0
