"""Sticky mappings in Redis, shared by every balancer process and instance (SPEC §2).

Every call is bounded by `redis.timeout` (Redis slow is Redis down for a request path). While
Redis is unreachable the store says `available = False`, serves from its own copy, and one
background task reconnects with backoff capped at 5 s; the outage and the recovery are each
logged once. A near cache in this process holds a mapping it read or wrote for `near_ttl`
seconds (never an absence), so a hot session does not cost a round trip per request while
instances still converge within `near_ttl`.

The copy (SPEC §2): every mapping the process writes or reads is also kept in its own bounded
MemoryStore with the same sliding ttl. When Redis answers a miss for a key the copy holds,
Redis lost it (restarted empty): the copy is used and written back (`SET NX`, so a mapping
another instance wrote meanwhile wins), and a Redis restart re-pins no session the process
still knows. Values registered by `load_or_create` (the cookie secret) are written back with
`SET NX` too: then, when Redis comes back from an outage, and every KEEP_INTERVAL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from balancer.histogram import Histogram
from balancer.sticky.store import MemoryStore

log = logging.getLogger("balancer.sticky")

MAX_BACKOFF = 5.0
NEAR_TTL = 2.0
# How often kept values are re-set with NX: a Redis restarted empty while this process sent it
# nothing (redis-py reconnects quietly) gets the secret back within this.
KEEP_INTERVAL = 1.0


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A batch's failure is every waiter's; one that gave up (cancelled) must not leave an
    exception nobody retrieved."""
    if not future.cancelled():
        future.exception()


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        ttl: float,
        *,
        call_timeout: float,
        namespace: str = "balancer:sticky:",
        near_ttl: float = NEAR_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.namespace = namespace
        self.call_timeout = call_timeout
        self._ttl_ms = max(1, int(ttl * 1000))
        self._redis = aioredis.Redis.from_url(
            url,
            # Our own asyncio.timeout bounds each call; redis-py's socket_timeout would add an
            # asyncio.wait_for (a task) to every send and every read.
            socket_timeout=None,
            socket_connect_timeout=max(call_timeout, 0.2),
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # a failed call falls back at once, no retry
            decode_responses=True,
        )
        self.copy = MemoryStore(ttl, clock=clock)  # also what serves while Redis is away
        # Not sliding: a hot session is re-read from Redis every near_ttl, so instances converge
        # and Redis' own sliding TTL is refreshed.
        self._near = MemoryStore(near_ttl, max_entries=10_000, clock=clock, sliding=False)
        self.available = True
        self._kept: dict[str, str] = {}  # full Redis key -> value, re-set with NX (the secret)
        self._reconnect: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self.errors_total = 0
        self.calls = Histogram()  # the request path's Redis calls (get, set), failed ones too
        self._batch: dict[str, asyncio.Future[Any]] | None = None  # GETEXs for the next turn
        self._batches: set[asyncio.Task[None]] = set()
        self.batches_total = 0  # round trips of GETEX batches

    async def get(self, key: str) -> str | None:
        if (backend := self._near.get_now(key)) is not None:
            return backend
        if not self.available:
            return self.copy.get_now(key)
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout):
                value = await asyncio.shield(self._getex(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return self.copy.get_now(key)
        finally:
            self.calls.record(time.monotonic() - began)
        if not isinstance(value, str):
            held = self.copy.get_now(key)  # ours but not Redis': it lost it (restarted empty)
            return None if held is None else await self._write_back(key, held)
        self._near.set_now(key, value)
        self.copy.set_now(key, value)
        return value

    def _getex(self, key: str) -> asyncio.Future[Any]:
        """The GETEX of `key`, batched: every key asked for before the event loop's next turn
        goes in one pipeline (one round trip, and far less redis-py per key under load); the
        same key asked twice is read once."""
        batch = self._batch
        if batch is None:
            batch = self._batch = {}
            asyncio.get_running_loop().call_soon(self._send_batch)
        future = batch.get(key)
        if future is None:
            future = batch[key] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieved)
        return future

    def _send_batch(self) -> None:
        batch, self._batch = self._batch or {}, None
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _run_batch(self, batch: dict[str, asyncio.Future[Any]]) -> None:
        keys = list(batch)
        self.batches_total += 1
        try:
            async with asyncio.timeout(self.call_timeout):
                if len(keys) == 1:
                    values = [await self._redis.getex(self.namespace + keys[0], px=self._ttl_ms)]
                else:
                    values = await self._pipeline(
                        [("GETEX", self.namespace + key, "PX", self._ttl_ms) for key in keys]
                    )
        except (RedisError, OSError, TimeoutError) as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
            return
        for key, value in zip(keys, values, strict=True):
            future = batch[key]
            if not future.done():
                future.set_result(value)

    async def _write_back(self, key: str, backend: str) -> str:
        """Redis answered a miss for a mapping this process holds (it restarted empty): put
        ours back unless another instance already wrote one, and go where Redis then says."""
        name = self.namespace + key
        try:
            async with asyncio.timeout(self.call_timeout):
                commands = [("SET", name, backend, "PX", self._ttl_ms, "NX"), ("GET", name)]
                commands += (("SET", kept, value, "NX") for kept, value in self._kept.items())
                replies = await self._pipeline(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return backend
        winner = replies[1] if isinstance(replies[1], str) else backend
        self._near.set_now(key, winner)
        self.copy.set_now(key, winner)
        return winner

    async def set(self, key: str, backend: str) -> None:
        self._near.set_now(key, backend)
        self.copy.set_now(key, backend)
        if not self.available:
            return
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.call_timeout):
                await self._redis.set(self.namespace + key, backend, px=self._ttl_ms)
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
        finally:
            self.calls.record(time.monotonic() - began)

    async def connect(self) -> None:
        """Check Redis at start; when it is down, retry in the background (never block)."""
        try:
            async with asyncio.timeout(max(self.call_timeout, 0.2)):
                await self._redis.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)

    async def load_or_create(self, key: str, value: str) -> str:
        """The value Redis holds at `key` (a full key, outside the namespace), set to `value`
        first when it has none (`SET NX`); `value` itself when Redis does not answer. Either
        way the process keeps it and writes it back with `SET NX` whenever Redis returns."""
        if self.available:
            try:
                async with asyncio.timeout(max(self.call_timeout, 0.2)):
                    replies = await self._pipeline([("SET", key, value, "NX"), ("GET", key)])
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
            else:
                if isinstance(replies[1], str) and replies[1]:
                    value = replies[1]
        self._kept[key] = value
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_loop())
        return value

    async def _keep_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEP_INTERVAL)
            if self.available:  # else the reconnect loop restores them when Redis is back
                try:
                    await self._restore_kept()
                except (RedisError, OSError, TimeoutError):
                    pass  # requests notice an outage; this only puts values back

    async def _restore_kept(self) -> None:
        """Put the kept values back where Redis lost them (SPEC §2: the secret, with SET NX)."""
        if not self._kept:
            return
        async with asyncio.timeout(max(self.call_timeout, 0.2)):
            await self._pipeline([("SET", key, value, "NX") for key, value in self._kept.items()])

    async def _pipeline(self, commands: list[tuple[str | int, ...]]) -> list[Any]:
        """Several commands in one round trip (a pipeline, no MULTI); their replies."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for command in commands:
                _ = pipe.execute_command(*command)  # queued: nothing to await yet
            return await pipe.execute()

    async def close(self) -> None:
        for task in (self._reconnect, self._keeper, *self._batches):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._redis.aclose()

    def _lost(self, exc: BaseException) -> None:
        self.errors_total += 1
        if not self.available:
            return
        self.available = False
        log.warning(
            "Redis at %s unavailable (%s): sticky sessions are kept in this process until it "
            "returns",
            self.url,
            type(exc).__name__ if not str(exc) else exc,
        )
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.1
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(max(self.call_timeout, 0.2)):
                    await self._redis.ping()
                await self._restore_kept()
            except (RedisError, OSError, TimeoutError):
                delay = min(MAX_BACKOFF, delay * 2)
                continue
            self.available = True
            self._reconnect = None
            log.info("Redis at %s is back: sticky sessions are shared again", self.url)
            return
