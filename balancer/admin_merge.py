"""The whole balancer's `/status` and `/metrics` out of each worker's (SPEC §3: with several
workers they describe the whole balancer, not one worker). Pure functions: the supervisor's
admin app fetches, this merges.

Counts add up (requests, attempts, failures, in flight, histogram buckets). A backend's state,
health and breaker are each worker's own view for now (each worker runs its own health checks
and breakers): they should agree, and where they do not the worst is shown, so that a problem
one worker sees is never hidden by another that has not seen it yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SUMMED = ("in_flight", "requests_total", "attempts_total", "failures_total")
# Worst last: the merged view is the highest rank any worker reports.
RANKS: dict[str, tuple[str, ...]] = {
    "state": ("healthy", "draining", "unhealthy", "disabled"),
    "health": ("healthy", "unhealthy"),
    "breaker": ("closed", "half_open", "open"),
}
HIGHEST = ("breaker_retry_in_seconds", "consecutive_failures", "last_check")

# /metrics: gauges that add up across workers; the other gauges (0/1 states, the breaker's
# 0/1/2) take the highest, the worst. The latency EWMA is averaged, weighted by requests.
SUMMED_GAUGES = frozenset({"balancer_backend_in_flight", "balancer_queued_requests"})
WEIGHTED_GAUGES = {
    "balancer_backend_latency_ewma_seconds": "balancer_request_duration_seconds_count"
}
SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

LabelKey = tuple[tuple[str, str], ...]


def _worst(name: str, values: list[Any]) -> Any:
    ranks = RANKS[name]
    return max(values, key=lambda value: ranks.index(value) if value in ranks else len(ranks))


def merge_backend(views: list[dict[str, Any]]) -> dict[str, Any]:
    """One backend as the whole balancer sees it, from each worker's view of it."""
    merged = dict(views[0])  # what the workers share (name, url, weight, mode, ...)
    for key in SUMMED:
        merged[key] = sum(view.get(key, 0) for view in views)
    for key in RANKS:
        if key in merged:
            merged[key] = _worst(key, [view[key] for view in views if key in view])
    for key in HIGHEST:
        if key in merged:
            merged[key] = max(view.get(key, 0) for view in views)
    merged["routable"] = any(view.get("routable", False) for view in views)
    requests = [view.get("requests_total", 0) for view in views]
    latencies = [view.get("latency_ewma_ms", 0.0) for view in views]
    total = sum(requests)
    mean = (
        sum(r * lat for r, lat in zip(requests, latencies, strict=True)) / total
        if total
        else sum(latencies) / len(latencies)
    )
    merged["latency_ewma_ms"] = round(mean, 3)
    return merged


def merge_status(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """The /status of the workers that answered (at least one), as one."""
    merged = dict(statuses[0])
    merged["queued"] = sum(status.get("queued", 0) for status in statuses)
    sticky = dict(merged.get("sticky", {}))
    if sticky:
        sticky["available"] = all(s.get("sticky", {}).get("available", True) for s in statuses)
        merged["sticky"] = sticky
    views: dict[str, list[dict[str, Any]]] = {}  # by name, in the first worker's order
    for status in statuses:
        for backend in status.get("backends", []):
            views.setdefault(backend["name"], []).append(backend)
    merged["backends"] = [merge_backend(one) for one in views.values()]
    return merged


def requests_served(status: dict[str, Any]) -> int:
    """The requests one worker's backends answered: which worker took how many."""
    return sum(int(backend.get("requests_total", 0)) for backend in status.get("backends", []))


# --- /metrics ---------------------------------------------------------------------------


def _key(labels: dict[str, str]) -> LabelKey:
    return tuple(sorted(labels.items()))


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _combine(
    family: Metric,
    sample: str,
    labels: LabelKey,
    values: list[tuple[int, float]],
    lookup: list[dict[tuple[str, LabelKey], float]],
) -> float:
    numbers = [value for _, value in values]
    if family.type in SUMMED_TYPES:
        return min(numbers) if sample.endswith("_created") else sum(numbers)
    if family.name in SUMMED_GAUGES:
        return sum(numbers)
    if family.name in WEIGHTED_GAUGES:
        by = WEIGHTED_GAUGES[family.name]
        weights = [lookup[worker].get((by, labels), 0.0) for worker, _ in values]
        total = sum(weights)
        if total:
            return sum(w * v for w, v in zip(weights, numbers, strict=True)) / total
        return sum(numbers) / len(numbers)
    return max(numbers)


def merge_metrics(texts: list[str], extra: Iterable[Metric] = ()) -> bytes:
    """Each worker's Prometheus text as one exposition: samples of the same name and labels
    combined (see SUMMED_GAUGES), families in the first worker's order, then `extra`."""
    parsed = [list(text_string_to_metric_families(text)) for text in texts]
    lookup = [
        {(s.name, _key(s.labels)): s.value for family in families for s in family.samples}
        for families in parsed
    ]
    first: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, LabelKey], list[tuple[int, float]]]] = {}
    for worker, families in enumerate(parsed):
        for family in families:
            if first.setdefault(family.name, family).type != family.type:
                continue  # a worker of another version: its series is not comparable
            into = samples.setdefault(family.name, {})
            for s in family.samples:
                into.setdefault((s.name, _key(s.labels)), []).append((worker, s.value))
    merged: list[Metric] = []
    for name, family in first.items():
        metric = Metric(name, family.documentation, family.type, family.unit)
        for (sample, labels), values in samples.get(name, {}).items():
            metric.add_sample(
                sample, dict(labels), _combine(family, sample, labels, values, lookup)
            )
        merged.append(metric)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*merged, *extra]))
    return generate_latest(registry)
