"""The Redis store's batched reads against a real redis-server: concurrent lookups before the
event loop's next turn share one round trip, a key asked twice is read once, and a Redis that
goes away fails every waiter over to the process's own copy."""

from __future__ import annotations

import asyncio

from balancer.sticky.redis_store import RedisStore

from support import RedisServer


async def test_concurrent_lookups_share_one_round_trip(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, 60.0, call_timeout=1.0, near_ttl=0.001)
    try:
        await store.connect()
        for i in range(20):
            await store.set(f"k{i}", f"b{i % 3}")
        store._near._entries.clear()  # every read goes to Redis
        before = store.batches_total
        keys = [f"k{i}" for i in range(20)] + ["k0", "k0", "missing"]
        got = await asyncio.gather(*(store.get(key) for key in keys))
        assert got == [f"b{i % 3}" for i in range(20)] + ["b0", "b0", None]
        assert store.batches_total - before == 1  # 23 lookups, one pipeline
        assert store.available
    finally:
        await store.close()


async def test_a_batch_that_fails_answers_every_waiter_from_the_copy(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url, 60.0, call_timeout=0.5, near_ttl=0.001)
    try:
        await store.connect()
        for i in range(5):
            await store.set(f"k{i}", "b1")
        store._near._entries.clear()
        redis_server.kill()
        got = await asyncio.gather(*(store.get(f"k{i}") for i in range(5)))
        assert got == ["b1"] * 5  # the process's own copy
        assert not store.available and store.errors_total >= 1
    finally:
        await store.close()
