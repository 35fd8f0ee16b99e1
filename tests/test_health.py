"""Health-check units: rise/fall counting and reported load."""

from __future__ import annotations

import pytest

from balancer.health import RiseFall, parse_load


@pytest.mark.parametrize(
    ("results", "verdicts"),
    [
        ("ppp", [None, None, None]),
        ("ff", [None, None]),
        ("fff", [None, None, "unhealthy"]),
        ("ffpfff", [None, None, None, None, None, "unhealthy"]),  # a pass resets the streak
        ("fffp", [None, None, "unhealthy", None]),  # rise 2: one pass is not enough
        ("fffpp", [None, None, "unhealthy", None, "healthy"]),
        ("fffpfpp", [None, None, "unhealthy", None, None, None, "healthy"]),
    ],
)
def test_rise_fall(results: str, verdicts: list[str | None]) -> None:
    counter = RiseFall(rise=2, fall=3)
    assert [counter.observe(r == "p") for r in results] == verdicts


def test_rise_fall_of_one_flips_at_once() -> None:
    counter = RiseFall(rise=1, fall=1)
    assert [counter.observe(p) for p in (False, False, True, True)] == [
        "unhealthy",
        None,
        "healthy",
        None,
    ]


@pytest.mark.parametrize(
    ("body", "header", "load"),
    [
        (b'{"cpu": 0.42, "memory": 0.61}', None, (0.42, 0.61)),
        (b'{"cpu": 1.7, "memory": -1}', None, (1.0, 0.0)),  # clamped to 0..1
        (b'{"cpu": true, "memory": "x"}', None, (None, None)),
        (b"ok", None, (None, None)),
        (b"{not json", None, (None, None)),
        (b"", b"cpu=0.3, memory=0.2", (0.3, 0.2)),
        (b"", b"cpu=0.3;memory=oops", (0.3, None)),
        (b'{"cpu": 0.9}', b"cpu=0.1, memory=0.2", (0.9, 0.2)),  # the body wins per key
    ],
)
def test_parse_load(
    body: bytes, header: bytes | None, load: tuple[float | None, float | None]
) -> None:
    assert parse_load(body, header) == load
