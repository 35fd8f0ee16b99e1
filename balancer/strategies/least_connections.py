"""least_connections: the fewest requests in flight per unit of weight. O(n) pick.

Ties (common at low load, when every backend has 0 in flight) are broken at random, so the
first backend in the list does not take every request of a quiet period.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend


class LeastConnections:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        best: list[Backend] = []
        best_load = 0.0
        for backend in candidates:
            load = backend.in_flight / backend.effective_weight
            if not best or load < best_load:
                best, best_load = [backend], load
            elif load == best_load:
                best.append(backend)
        return best[0] if len(best) == 1 else self._rng.choice(best)
