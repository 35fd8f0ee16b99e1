"""How the supervisor merges its workers' /status and /metrics (balancer/admin_merge.py)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest

from balancer.admin_merge import merge_metrics, merge_status, requests_served


def backend(**changes: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": "b0",
        "url": "http://127.0.0.1:9001",
        "weight": 1,
        "state": "healthy",
        "breaker": "closed",
        "routable": True,
        "breaker_retry_in_seconds": 0,
        "in_flight": 0,
        "requests_total": 0,
        "attempts_total": 0,
        "failures_total": 0,
        "latency_ewma_ms": 0.0,
        "health": "healthy",
    }
    view.update(changes)
    return view


def status(*backends: dict[str, Any], **top: Any) -> dict[str, Any]:
    answer = {
        "version": "0.1.0",
        "strategy": "round_robin",
        "sticky": {"mode": "off", "store": "memory", "available": True},
        "queued": 0,
        "backends": list(backends),
    }
    answer.update(top)
    return answer


def test_counts_add_up_and_the_latency_is_weighted_by_requests() -> None:
    one = status(
        backend(
            requests_total=30, attempts_total=31, failures_total=1, in_flight=2, latency_ewma_ms=1.0
        ),
        backend(name="b1", requests_total=5),
        queued=1,
    )
    two = status(
        backend(requests_total=10, attempts_total=10, in_flight=1, latency_ewma_ms=5.0),
        backend(name="b1", requests_total=7),
        queued=2,
    )
    merged = merge_status([one, two])
    b0, b1 = merged["backends"]
    assert (b0["requests_total"], b0["attempts_total"], b0["failures_total"]) == (40, 41, 1)
    assert b0["in_flight"] == 3 and merged["queued"] == 3
    assert b0["latency_ewma_ms"] == 2.0  # (30 * 1 + 10 * 5) / 40
    assert b1["requests_total"] == 12 and b1["latency_ewma_ms"] == 0.0
    assert [requests_served(one), requests_served(two)] == [35, 17]
    assert merged["strategy"] == "round_robin" and one["backends"][0]["requests_total"] == 30


def test_the_worst_view_shows_and_routable_if_any_worker_routes() -> None:
    one = status(backend(breaker="half_open", routable=False, breaker_retry_in_seconds=0))
    two = status(
        backend(state="unhealthy", health="unhealthy", breaker="open", breaker_retry_in_seconds=7.5)
    )
    three = status(backend(state="draining"))
    (merged,) = merge_status([one, two, three])["backends"]
    assert (merged["state"], merged["health"], merged["breaker"]) == (
        "unhealthy",
        "unhealthy",
        "open",
    )
    assert merged["breaker_retry_in_seconds"] == 7.5
    assert merged["routable"] is True
    (alone,) = merge_status([one])["backends"]
    assert alone["routable"] is False and alone["breaker"] == "half_open"
    sticky = merge_status(
        [status(), status(sticky={"mode": "off", "store": "redis", "available": False})]
    )
    assert sticky["sticky"]["available"] is False


WORKER_0 = """\
# HELP balancer_requests_total Requests answered
# TYPE balancer_requests_total counter
balancer_requests_total{backend="b0",code="200"} 3.0
# HELP balancer_request_duration_seconds Time
# TYPE balancer_request_duration_seconds histogram
balancer_request_duration_seconds_bucket{backend="b0",le="0.1"} 2.0
balancer_request_duration_seconds_bucket{backend="b0",le="+Inf"} 3.0
balancer_request_duration_seconds_count{backend="b0"} 3.0
balancer_request_duration_seconds_sum{backend="b0"} 0.3
# HELP balancer_backend_healthy 1 when healthy
# TYPE balancer_backend_healthy gauge
balancer_backend_healthy{backend="b0"} 1.0
# HELP balancer_backend_in_flight In flight
# TYPE balancer_backend_in_flight gauge
balancer_backend_in_flight{backend="b0"} 2.0
# HELP balancer_circuit_breaker_state 0 closed, 1 half-open, 2 open
# TYPE balancer_circuit_breaker_state gauge
balancer_circuit_breaker_state{backend="b0"} 0.0
# HELP balancer_backend_latency_ewma_seconds EWMA
# TYPE balancer_backend_latency_ewma_seconds gauge
balancer_backend_latency_ewma_seconds{backend="b0"} 0.01
"""

WORKER_1 = (
    WORKER_0.replace(
        'code="200"} 3.0', 'code="200"} 1.0\nbalancer_requests_total{backend="b0",code="502"} 4.0'
    )
    .replace('le="0.1"} 2.0', 'le="0.1"} 1.0')
    .replace('le="+Inf"} 3.0', 'le="+Inf"} 1.0')
    .replace('_count{backend="b0"} 3.0', '_count{backend="b0"} 1.0')
    .replace('_sum{backend="b0"} 0.3', '_sum{backend="b0"} 0.5')
    .replace('healthy{backend="b0"} 1.0', 'healthy{backend="b0"} 0.0')
    .replace('state{backend="b0"} 0.0', 'state{backend="b0"} 2.0')
    .replace('ewma_seconds{backend="b0"} 0.01', 'ewma_seconds{backend="b0"} 0.05')
)


def samples(text: str) -> dict[str, float]:
    pairs = [line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in pairs}


def test_metrics_add_counters_and_buckets_and_keep_the_worst_state() -> None:
    text = merge_metrics([WORKER_0, WORKER_1]).decode()
    got = samples(text)
    assert got['balancer_requests_total{backend="b0",code="200"}'] == 4.0
    assert got['balancer_requests_total{backend="b0",code="502"}'] == 4.0  # one worker's
    assert got['balancer_request_duration_seconds_bucket{backend="b0",le="0.1"}'] == 3.0
    assert got['balancer_request_duration_seconds_bucket{backend="b0",le="+Inf"}'] == 4.0
    assert got['balancer_request_duration_seconds_count{backend="b0"}'] == 4.0
    assert got['balancer_request_duration_seconds_sum{backend="b0"}'] == pytest.approx(0.8)
    assert got['balancer_backend_in_flight{backend="b0"}'] == 4.0  # summed
    assert got['balancer_backend_healthy{backend="b0"}'] == 1.0  # 0/1: the highest
    assert got['balancer_circuit_breaker_state{backend="b0"}'] == 2.0  # open wins
    # weighted by the requests each worker timed: (3 * 0.01 + 1 * 0.05) / 4
    assert got['balancer_backend_latency_ewma_seconds{backend="b0"}'] == pytest.approx(0.02)
    assert text.count("# TYPE balancer_requests_total counter") == 1
    assert samples(merge_metrics([WORKER_0]).decode()) == samples(WORKER_0)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
