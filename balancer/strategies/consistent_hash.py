"""consistent_hash: a hash ring with virtual nodes (Karger et al.). O(log n) pick.

Each backend owns VNODES x weight points on a ring of 64-bit hashes; a request's key (client
IP, a header or a cookie: `hash.on`) goes to the owner of the first point at or after its own
hash. When a backend leaves, only the keys it owned move (about 1/n of them); the others keep
their backend. The ring is built once per candidates snapshot, not per request. A request
without a key (no such header or cookie) goes to a random candidate.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend

VNODES = 160


def ring_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    def __init__(self, candidates: Sequence[Backend]) -> None:
        points: list[tuple[int, int]] = []
        for index, backend in enumerate(candidates):
            name = backend.name.encode()
            for vnode in range(VNODES * max(1, backend.effective_weight)):
                points.append((ring_hash(b"%s#%d" % (name, vnode)), index))
        points.sort()
        self.hashes = [h for h, _ in points]
        self.owners = [candidates[i] for _, i in points]

    def lookup(self, key: bytes) -> Backend:
        index = bisect.bisect_left(self.hashes, ring_hash(key))
        return self.owners[index % len(self.owners)]


class ConsistentHash:
    needs_key = True

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._rings: dict[tuple[str, ...], Ring] = {}

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        if key is None:
            return self._rng.choice(candidates)
        names = tuple(b.name for b in candidates)
        ring = self._rings.get(names)
        if ring is None or ring.owners[0] not in candidates:
            if len(self._rings) > 64:
                self._rings.clear()  # snapshots come and go; keep the cache small
            ring = self._rings[names] = Ring(candidates)
        return ring.lookup(key)
