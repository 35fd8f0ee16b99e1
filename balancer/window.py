"""The last few minutes of traffic, per backend: what the dashboard charts and the alerts judge.

A Sampler reads the cumulative counters (requests by status, the duration histogram) every
`interval` seconds into a bounded ring, `history` seconds long; a window's figures are the
differences between two samples: requests per second, the share of 5xx answers, latency
percentiles (linear within the histogram bucket, as Prometheus' histogram_quantile). Reading
the counters is the same plain ints /metrics reads: nothing on the request path changes.

With workers, the supervisor samples the sum of every worker's counters (`GET /totals` on
their private sockets), so the figures are the whole balancer's.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from balancer.backend import DURATION_BUCKETS, Backend, RequestStats

log = logging.getLogger("balancer.window")

INTERVAL = 2.0  # seconds between samples
HISTORY = 300.0  # seconds kept: the dashboard's charts, and the longest alert window
ALL = "*"  # the whole balancer's figures, every backend and none together


@dataclass(slots=True)
class Totals:
    """One backend's cumulative counters at one moment (summable across workers)."""

    codes: dict[int, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))

    @classmethod
    def of(cls, stats: RequestStats) -> Totals:
        return cls(dict(stats.codes), list(stats.bucket_counts))

    def add(self, other: Totals) -> None:
        for code, count in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + count
        if len(other.buckets) == len(self.buckets):
            self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def as_json(self) -> dict[str, Any]:
        return {"codes": {str(c): n for c, n in self.codes.items()}, "buckets": self.buckets}

    @classmethod
    def from_json(cls, body: Any) -> Totals:
        """A worker's JSON; ValueError when it is not the shape as_json writes."""
        if not isinstance(body, dict):
            raise ValueError("expected an object")
        codes, buckets = body.get("codes"), body.get("buckets")
        if not isinstance(codes, dict) or not isinstance(buckets, list):
            raise ValueError("expected codes and buckets")
        if len(buckets) != len(DURATION_BUCKETS) + 1 or not all(
            isinstance(n, int) and n >= 0 for n in buckets
        ):
            raise ValueError("bad buckets")
        parsed = {int(c): n for c, n in codes.items() if isinstance(n, int) and n >= 0}
        return cls(parsed, buckets)


Snapshot = dict[str, Totals]  # backend name (and ALL) -> its totals
NO_BACKEND = "none"  # requests answered without a backend (503), as in /metrics


def local_snapshot(backends: Iterable[Backend], unrouted: RequestStats) -> Snapshot:
    snapshot = {backend.name: Totals.of(backend.requests) for backend in backends}
    snapshot[NO_BACKEND] = Totals.of(unrouted)
    return snapshot


def summed(snapshots: Iterable[Mapping[str, Totals]]) -> Snapshot:
    total: Snapshot = {}
    for snapshot in snapshots:
        for name, totals in snapshot.items():
            total.setdefault(name, Totals()).add(totals)
    return total


def with_all(snapshot: Snapshot) -> Snapshot:
    everything = Totals()
    for name, totals in snapshot.items():
        if name != ALL:
            everything.add(totals)
    return {**snapshot, ALL: everything}


@dataclass(frozen=True, slots=True)
class Figures:
    """One backend over one window."""

    seconds: float
    requests: int
    errors: int  # 5xx answers
    buckets: tuple[int, ...]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """Seconds; None without requests. Past the last bound: that bound (as Prometheus)."""
        total = sum(self.buckets)
        if not total:
            return None
        rank = q * total
        seen = 0
        for index, count in enumerate(self.buckets):
            if seen + count >= rank and count:
                if index >= len(DURATION_BUCKETS):
                    return DURATION_BUCKETS[-1]
                low = DURATION_BUCKETS[index - 1] if index else 0.0
                high = DURATION_BUCKETS[index]
                return low + (high - low) * (rank - seen) / count
            seen += count
        return DURATION_BUCKETS[-1]

    def as_json(self) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {
            "rate": round(self.rate, 3),
            "error_ratio": round(self.error_ratio, 4),
            "p50_ms": ms(self.quantile(0.5)),
            "p95_ms": ms(self.quantile(0.95)),
            "p99_ms": ms(self.quantile(0.99)),
        }


def figures(older: Totals | None, newer: Totals, seconds: float) -> Figures:
    older = older or Totals()
    requests = sum(newer.codes.values()) - sum(older.codes.values())
    errors = sum(n for c, n in newer.codes.items() if c >= 500) - sum(
        n for c, n in older.codes.items() if c >= 500
    )
    buckets = tuple(max(a - b, 0) for a, b in zip(newer.buckets, older.buckets, strict=False))
    # A counter that went down (a worker restarted, a backend re-added) reads as nothing.
    return Figures(seconds, max(requests, 0), max(errors, 0), buckets)


class Sampler:
    def __init__(
        self,
        read: Callable[[], Awaitable[Snapshot]],
        *,
        interval: float = INTERVAL,
        history: float = HISTORY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self.interval = interval
        self._clock = clock
        self.samples: deque[tuple[float, Snapshot]] = deque(maxlen=int(history / interval) + 1)
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        try:
            snapshot = with_all(await self._read())
        except Exception as exc:  # a read that fails leaves a gap, never stops sampling
            log.debug("could not sample the counters: %r", exc)
            return
        self.samples.append((self._clock(), snapshot))

    def start(self) -> None:
        async def run() -> None:
            while True:
                await self.sample()
                await asyncio.sleep(self.interval)

        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def over(self, seconds: float) -> dict[str, Figures]:
        """Each backend's figures over the last `seconds` (as much of them as was sampled)."""
        if len(self.samples) < 2:
            return {}
        newest_time, newest = self.samples[-1]
        times = [t for t, _ in self.samples]
        index = min(bisect.bisect_left(times, newest_time - seconds), len(self.samples) - 2)
        oldest_time, oldest = self.samples[index]
        span = newest_time - oldest_time
        return {name: figures(oldest.get(name), totals, span) for name, totals in newest.items()}

    def series(self) -> dict[str, Any]:
        """The dashboard's charts: each backend's figures between consecutive samples."""
        samples = list(self.samples)
        times: list[float] = []
        by_backend: dict[str, list[dict[str, Any] | None]] = {}  # None: it was not there yet
        for (t0, older), (t1, newer) in itertools.pairwise(samples):
            times.append(round(t1, 3))
            for name, totals in newer.items():
                points = by_backend.setdefault(name, [None] * (len(times) - 1))
                points.append(figures(older.get(name), totals, t1 - t0).as_json())
            for points in by_backend.values():  # one that left: None from then on
                points.extend([None] * (len(times) - len(points)))
        return {"interval": self.interval, "times": times, "backends": by_backend}
