"""weighted: smooth weighted round-robin, as nginx does it. O(n) pick.

Each pick adds every candidate's weight to its running score, takes the highest score and
subtracts the total weight from it. Weights 5:1:1 give a a b a c a a: each backend gets exactly
its share over a cycle, spread out, never in bursts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend


class Weighted:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._current: dict[str, int] = {}  # by backend name, so a rebuilt pool keeps turns

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        current = self._current
        total = 0
        best: Backend | None = None
        best_score = 0
        for backend in candidates:
            weight = backend.effective_weight
            total += weight
            score = current.get(backend.name, 0) + weight
            current[backend.name] = score
            if best is None or score > best_score:
                best, best_score = backend, score
        assert best is not None
        current[best.name] = best_score - total
        return best
