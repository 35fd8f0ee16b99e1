"""`GET /decisions` (SPEC §3): a bounded ring of the last routing decisions of real requests.

Recording is what every request pays, so it is one tuple appended to a deque (the front's
`answered` hook: pipeline/access.py); the JSON is built only when asked. Each record is a tuple of
atoms (times, status, method, target, strategy, pick, attempts, the sticky key and pin):
nothing that holds the request alive, and nothing the garbage collector has to walk.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from balancer.sticky.table import shown

SIZE = 1000  # decisions kept (SPEC §3: at most 1,000)


class Decisions:
    def __init__(self, size: int = SIZE) -> None:
        self.ring: deque[tuple[Any, ...]] = deque(maxlen=size)

    def as_json(self, now: float, limit: int = SIZE) -> list[dict[str, Any]]:
        """Newest first; `now` is the monotonic clock the records were made on."""
        wall = time.time()
        out: list[dict[str, Any]] = []
        for ended, started, status, method, path, strategy, pick, attempts, pin in reversed(
            self.ring
        ):
            if len(out) >= limit:
                break
            sticky = None if pin is None else {"key": shown(pin[0]), "backend": pin[1]}
            out.append(
                {
                    "time": round(wall - (now - started), 3),
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round((ended - started) * 1000, 3),
                    "strategy": strategy,
                    "sticky": sticky,
                    "pick": pick,
                    "attempts": attempts,
                }
            )
        return out
