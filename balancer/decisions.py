"""`GET /decisions` (SPEC §3): a bounded ring of the last routing decisions of real requests.

Recording is what every request pays, so it is one tuple appended to a deque (the front's
`answered` hook: pipeline/access.py); the JSON is built only when asked. Each record holds
the route the proxy kept on the connection (when it started, the backends tried, the sticky
plan, the strategy) and the request's parsed head, nothing of its body.
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
        for ended, (started, tried, plan, strategy), status, message in reversed(self.ring):
            if len(out) >= limit:
                break
            sticky = None
            if plan is not None and plan.key is not None:
                pinned = plan.pinned.name if plan.pinned is not None else None
                sticky = {"key": shown(plan.key), "backend": pinned}
            out.append(
                {
                    "time": round(wall - (now - started), 3),
                    "method": message.method,
                    "path": message.path,
                    "status": status,
                    "duration_ms": round((ended - started) * 1000, 3),
                    "strategy": strategy,
                    "sticky": sticky,
                    "pick": tried[-1].name if tried else None,
                    "attempts": len(tried),
                }
            )
        return out
