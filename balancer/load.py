"""Load that backends report about themselves, read by the adaptive strategy.

A health-check body `{"cpu": 0.42, "memory": 0.61}`, or an `X-Backend-Load: cpu=0.42,
memory=0.61` header on a health check or on any ordinary response. Values are fractions 0..1
(clamped); an absent or unreadable value is None (the strategy then assumes 0.5).
"""

from __future__ import annotations

import contextlib
import json

HEADER = b"x-backend-load"


def parse_load(body: bytes, header: bytes | None) -> tuple[float | None, float | None]:
    """cpu and memory (0..1) from a JSON probe body or an X-Backend-Load header."""
    values: dict[str, float] = {}
    if header:
        for part in header.replace(b";", b",").split(b","):
            key, _, raw = part.partition(b"=")
            with contextlib.suppress(ValueError):
                values[key.strip().decode("latin-1").lower()] = float(raw)
    if body[:1] == b"{":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            data = json.loads(body)
            if isinstance(data, dict):
                for name in ("cpu", "memory"):
                    value = data.get(name)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        values[name] = float(value)
    return _fraction(values.get("cpu")), _fraction(values.get("memory"))


def _fraction(value: float | None) -> float | None:
    if value is None or value != value:  # NaN
        return None
    return min(1.0, max(0.0, value))
