"""consistent_hash: a request's key (client IP, a header or a cookie: `hash.on`) goes to its
owner on a hash ring (ring.py). O(log n) pick.

The ring covers the pool's members and is built off the request path (SPEC §2), when the pool
tells `rebuild` its members or weights changed; picks and retries only walk it, clockwise past
owners that are not candidates now (unhealthy, tried by this request, full), so a backend that
leaves moves only its own keys (about 1/n) and a key's second choice is stable. A request
without a key goes to a random candidate.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from balancer.strategies.ring import Ring, ring_hash

if TYPE_CHECKING:
    from balancer.backend import Backend

log = logging.getLogger("balancer.strategies")


class ConsistentHash:
    needs_key = True

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self.ring: Ring | None = None
        self.builds = 0  # rings built so far (tests: never one per pick)
        self._members: tuple[tuple[Backend, int], ...] = ()

    def rebuild(self, backends: Sequence[Backend]) -> None:
        """The pool's members or weights may have changed: a new ring if they did."""
        members = tuple((b, b.weight) for b in backends)
        if self.ring is None or members != self._members:
            self.ring, self._members = Ring(backends), members
            self.builds += 1
            log.debug(
                "consistent_hash: ring of %d points over %d backends built",
                len(self.ring.owners),
                len({id(b) for b in self.ring.owners}),
            )

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        if key is None:
            return self._rng.choice(candidates)
        if self.ring is None:
            self.rebuild(candidates)  # used without a pool: nothing told it the members
        assert self.ring is not None
        owner = self.ring.walk(key, candidates)
        if owner is None:  # only candidates the ring does not know (yet): stable, not random
            owner = candidates[ring_hash(key) % len(candidates)]
        return owner
