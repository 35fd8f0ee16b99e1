"""round_robin: each candidate in turn. O(1) pick."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.backend import Backend


class RoundRobin:
    """Takes the candidates in order, one request each, wrapping around.

    The position survives changes of the candidate tuple (taken modulo its length), so a
    backend leaving or joining shifts the turn by at most one.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._next = 0

    def pick(self, candidates: Sequence[Backend], key: bytes | None = None) -> Backend:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]
