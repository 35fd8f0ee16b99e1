"""The retry rule of SPEC §4, and the budget that keeps it from becoming a storm."""

from __future__ import annotations

from balancer.backend import Backend
from balancer.errors import BackendTimeout, ProxyError
from balancer.runtime import Runtime

# RFC 9110 9.2.2: methods whose repetition has the same effect as one request.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def may_retry(
    rt: Runtime,
    exc: ProxyError,
    method: str,
    framing: bytes | None,
    tries: int,
    backend: Backend,
) -> bool:
    if tries > rt.retries:
        return False
    if not exc.sent:
        pass  # never reached a backend: any method may go elsewhere (SPEC §4)
    elif isinstance(exc, BackendTimeout):
        return False  # the backend may still be working on it (SPEC §4)
    elif method not in IDEMPOTENT or framing is not None:
        return False  # bytes went out: only idempotent requests with no body
    if not backend.routable:
        # The backend is out (its breaker opened, it is unhealthy or disabled): its share
        # must go somewhere, and that is no storm, so the budget does not apply. When a
        # backend dies with requests in flight, they all fail at once, far past the budget.
        return True
    return rt.retry_budget.allows(rt.pool.in_flight)
