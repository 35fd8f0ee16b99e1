"""A routing decision in words: the pick, a sticky pin, and why each other backend was not a
candidate (the rule names of SPEC §3 `excluded_because`). Logged at debug today; the ground
for /explain and /decisions."""

from __future__ import annotations

import logging

from balancer.backend import Backend
from balancer.pipeline.sticky_stage import StickyPlan
from balancer.pool import Pool

log = logging.getLogger("balancer.proxy")


def log_decision(
    method: str,
    path: str,
    pool: Pool,
    backend: Backend | None,
    tried: list[Backend],
    plan: StickyPlan | None,
) -> None:
    """`--log-level debug`: the pick and why every other backend was not a candidate."""
    candidates = pool.candidates
    excluded = []
    for other in pool.backends:
        if other is backend:
            continue
        if other in tried:
            reason = "tried"
        elif other not in candidates:
            reason = why_not(other)
        elif other.full:
            reason = "full"
        else:
            continue
        excluded.append(f"{other.name}={reason}")
    pinned = plan.pinned.name if plan is not None and plan.pinned is not None else None
    log.debug(
        "route %s %s -> %s%s; excluded: %s",
        method,
        path,
        backend.name if backend is not None else "none",
        f" (sticky pin {pinned})" if pinned else "",
        ", ".join(excluded) or "none",
    )


def why_not(backend: Backend) -> str:
    """The rule that keeps a backend out of the candidates (SPEC §3's names)."""
    if backend.state != "healthy":
        return backend.state  # unhealthy, draining, disabled
    if backend.weight == 0:
        return "weight_0"
    if backend.breaker is not None and not backend.breaker.admits_new:
        return "breaker_open"
    return "backup"
