"""The hash ring of consistent_hash, with virtual nodes (Karger et al.): a pure structure.

Each backend owns points on a ring of 64-bit hashes, VNODES per unit of weight, scaled down to
MAX_POINTS in all, at least one each (SPEC §2: bounded whatever the weights). A key goes to the
owner of the first point at or after its own hash that is a candidate now.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend

VNODES = 160
MAX_POINTS = 20_000  # SPEC §2: a bounded ring, whatever the weights


def ring_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def vnodes(weights: Sequence[int]) -> list[int]:
    """Points per backend: VNODES x weight, or in proportion to weight within MAX_POINTS."""
    total = sum(weights)
    if VNODES * total <= MAX_POINTS:
        return [VNODES * w for w in weights]
    share = MAX_POINTS - len(weights)  # one each first, then the rest by weight (floored)
    return [1 + max(0, share) * w // total for w in weights]


class Ring:
    def __init__(self, backends: Sequence[Backend]) -> None:
        members = [b for b in backends if b.weight > 0]  # weight 0: never a candidate
        points: list[tuple[int, int]] = []
        for index, (backend, count) in enumerate(
            zip(members, vnodes([b.weight for b in members]), strict=True)
        ):
            name = backend.name.encode()
            points.extend((ring_hash(b"%s#%d" % (name, v)), index) for v in range(count))
        points.sort()
        self.hashes = [h for h, _ in points]
        self.owners = [members[i] for _, i in points]
        # Where the next run of another owner's points starts: a walk hops whole runs, so
        # it visits each owner's run at most once even when most of the ring is down.
        owners, size = self.owners, len(points)
        starts = [i for i in range(size) if owners[i] is not owners[i - 1]]
        self.runs = len(starts)
        self.next_run = [0] * size
        upcoming = starts[0] + size if starts else 0
        for i in range(size - 1, -1, -1):
            self.next_run[i] = upcoming
            if owners[i] is not owners[i - 1]:
                upcoming = i

    def walk(self, key: bytes, candidates: Sequence[Backend]) -> Backend | None:
        """The first owner clockwise from the key that is a candidate, or None."""
        owners, size = self.owners, len(self.owners)
        if not size:
            return None
        index = bisect.bisect_left(self.hashes, ring_hash(key))
        for _ in range(self.runs + 1):
            if (owner := owners[index % size]) in candidates:
                return owner
            index = self.next_run[index % size]
        return None
