"""A duration histogram over DURATION_BUCKETS in plain ints, for /metrics (metrics.histogram)."""

from __future__ import annotations

import bisect

from balancer.backend import DURATION_BUCKETS


class Histogram:
    __slots__ = ("buckets", "count", "total_seconds")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.total_seconds = 0.0
        self.count = 0

    def record(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total_seconds += seconds
        self.count += 1
