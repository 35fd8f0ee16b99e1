"""Prometheus exposition, read from the live stats at scrape time.

Nothing on the request path touches prometheus_client: the backends count in plain ints
(backend.py) and this collector turns them into series when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from balancer.backend import DURATION_BUCKETS, STATE, RequestStats
from balancer.control import Control
from balancer.health import HealthChecker
from balancer.sticky.redis_store import RedisStore
from balancer.window import NO_BACKEND  # the label of requests answered without a backend

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
BACKEND_STATES = tuple(dict.fromkeys(STATE.values()))  # healthy, unhealthy, draining, disabled


def histogram(
    family: HistogramMetricFamily, labels: list[str], buckets: list[int], total: float
) -> None:
    """One histogram sample set from per-bucket counts over DURATION_BUCKETS (+Inf last)."""
    cumulative = 0
    points: list[tuple[str, float]] = []
    for bound, count in zip(DURATION_BUCKETS, buckets, strict=False):
        cumulative += count
        points.append((_le(bound), cumulative))
    points.append(("+Inf", sum(buckets)))
    family.add_metric(labels, points, total)


def health_families(checker: HealthChecker) -> list[Metric]:
    """The health checks' results and durations (the supervisor's, with workers)."""
    results = CounterMetricFamily(
        "balancer_health_checks",
        "Health probes by backend and result (pass, fail, skipped: no socket of our own)",
        labels=["backend", "result"],
    )
    durations = HistogramMetricFamily(
        "balancer_health_check_duration_seconds",
        "Time a health probe took, passed or failed",
        labels=["backend"],
    )
    for name, stats in sorted(checker.stats.items()):
        for result, count in stats.results.items():
            results.add_metric([name, result], count)
        if stats.durations.count:
            histogram(durations, [name], stats.durations.buckets, stats.durations.total_seconds)
    return [results, durations]


def sticky_families(control: Control) -> list[Metric]:
    """Sticky lookups by outcome; with Redis its call latency and errors."""
    counts = control.sticky_counts
    lookups = CounterMetricFamily(
        "balancer_sticky_lookups",
        "Sticky lookups: hit (pinned), miss (unknown key), repin (pin cannot take it), new",
        labels=["result"],
    )
    for result in ("hit", "miss", "repin", "new"):
        lookups.add_metric([result], getattr(counts, result))
    families: list[Metric] = [lookups]
    store = control.store
    if isinstance(store, RedisStore):
        calls = HistogramMetricFamily(
            "balancer_sticky_store_call_duration_seconds",
            "Time of the request path's Redis calls (get, set), failed ones included",
        )
        histogram(calls, [], store.calls.buckets, store.calls.total_seconds)
        errors = CounterMetricFamily(
            "balancer_sticky_store_errors", "Redis calls that failed or timed out"
        )
        errors.add_metric([], store.errors_total)
        families += [calls, errors]
    return families


def reload_family(ok: int, failed: int) -> Metric:
    reloads = CounterMetricFamily(
        "balancer_reloads", "Reloads of the config file, by result", labels=["result"]
    )
    reloads.add_metric(["ok"], ok)
    reloads.add_metric(["failed"], failed)
    return reloads


class PoolCollector(Collector):
    """Everything /metrics shows of one process. A worker (`peer`) leaves out what its
    supervisor exports for the whole balancer: the health checks and the reloads."""

    def __init__(self, control: Control, *, peer: bool = False) -> None:
        self.control = control
        self.peer = peer

    def collect(self) -> Iterator[Metric]:
        control = self.control
        assert control.runtime is not None
        pool = control.runtime.pool
        store = control.store
        requests = CounterMetricFamily(
            "balancer_requests",
            "Requests answered, by backend and status sent to the client",
            labels=["backend", "code"],
        )
        durations = HistogramMetricFamily(
            "balancer_request_duration_seconds",
            "Time from request to the end of the response, by backend",
            labels=["backend"],
        )
        healthy = GaugeMetricFamily(
            "balancer_backend_healthy",
            "1 when the health checks pass (whatever the operator's mode and the breaker)",
            labels=["backend"],
        )
        states = GaugeMetricFamily(
            "balancer_backend_state",
            "1 for the backend's state (healthy, unhealthy, draining, disabled), 0 for the others",
            labels=["backend", "state"],
        )
        routable = GaugeMetricFamily(
            "balancer_backend_routable",
            "1 when the backend would take a new request now",
            labels=["backend"],
        )
        in_flight = GaugeMetricFamily(
            "balancer_backend_in_flight", "Requests in flight to the backend", labels=["backend"]
        )
        breaker = GaugeMetricFamily(
            "balancer_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["backend"],
        )
        attempts = CounterMetricFamily(
            "balancer_backend_attempts",
            "Attempts sent to the backend, retries included",
            labels=["backend"],
        )
        failures = CounterMetricFamily(
            "balancer_backend_failures",
            "Attempts that failed through the backend's fault",
            labels=["backend"],
        )
        latency = GaugeMetricFamily(
            "balancer_backend_latency_ewma_seconds",
            "Moving average of the time to the response head",
            labels=["backend"],
        )
        request_bytes = CounterMetricFamily(
            "balancer_backend_request_bytes",
            "Request body bytes sent to the backend",
            labels=["backend"],
        )
        response_bytes = CounterMetricFamily(
            "balancer_backend_response_bytes",
            "Response body bytes of the backend's answers sent to clients",
            labels=["backend"],
        )
        retries = CounterMetricFamily(
            "balancer_retries",
            "Requests retried on another backend after this one failed, by why it failed",
            labels=["backend", "reason"],
        )
        transitions = CounterMetricFamily(
            "balancer_circuit_breaker_transitions",
            "Breaker transitions by the state entered (those that happened in this process)",
            labels=["backend", "to"],
        )
        for backend in (*pool.backends, *control.registry.retiring):
            name = backend.name
            _add_requests(requests, durations, name, backend.requests)
            healthy.add_metric([name], 1.0 if backend.health == "healthy" else 0.0)
            for one in BACKEND_STATES:
                states.add_metric([name, one], 1.0 if backend.state == one else 0.0)
            routable.add_metric([name], 1.0 if backend.routable and not backend.full else 0.0)
            in_flight.add_metric([name], backend.in_flight)
            state = backend.breaker.state if backend.breaker is not None else "closed"
            breaker.add_metric([name], BREAKER_STATES[state])
            attempts.add_metric([name], backend.attempts_total)
            failures.add_metric([name], backend.failures_total)
            latency.add_metric([name], backend.latency_ewma)
            request_bytes.add_metric([name], backend.bytes_in)
            response_bytes.add_metric([name], backend.bytes_out)
            for reason, count in sorted(backend.retries.items()):
                retries.add_metric([name, reason], count)
            if backend.breaker is not None:
                for to, count in backend.breaker.transitions.items():
                    transitions.add_metric([name, to], count)
        _add_requests(requests, durations, NO_BACKEND, control.registry.unrouted)
        sticky = GaugeMetricFamily(
            "balancer_sticky_store_available",
            "1 when the session store answers (Redis reachable; always 1 in process)",
            labels=["store"],
        )
        sticky.add_metric([store.kind], 1.0 if store.available else 0.0)
        queued = GaugeMetricFamily("balancer_queued_requests", "Requests waiting for a slot")
        queued.add_metric([], pool.queued)
        yield from (requests, durations, healthy, in_flight, breaker, attempts, failures, latency)
        yield from (states, routable, sticky, queued, transitions)
        yield from (request_bytes, response_bytes, retries)
        yield from sticky_families(control)
        connections = GaugeMetricFamily(
            "balancer_client_connections", "Client connections open now (proxy port)"
        )
        connections.add_metric([], control.gate.open if control.gate is not None else 0)
        yield connections
        if not self.peer:
            yield reload_family(control.reloads_ok, control.reloads_failed)
            if control.health is not None:
                yield from health_families(control.health)


def _add_requests(
    requests: CounterMetricFamily,
    durations: HistogramMetricFamily,
    name: str,
    stats: RequestStats,
) -> None:
    for code, count in sorted(stats.codes.items()):
        requests.add_metric([name, str(code)], count)
    if stats.duration_count:
        histogram(durations, [name], stats.bucket_counts, stats.duration_sum)


def _le(bound: float) -> str:
    return repr(float(bound))


def make_registry(control: Control, *, peer: bool = False) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(control, peer=peer))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
