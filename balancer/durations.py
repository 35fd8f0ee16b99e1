"""Durations and sizes as written in the YAML file (SPEC §2), and back for humans.

Durations are `250ms`, `2s`, `1m`, `1h` (also compound, `1m30s`) or a bare number of seconds;
sizes are `512`, `64KB`, `8MB`, `1GB`, powers of 1024 (nginx's `k`/`m`/`g` and `KiB`/`MiB`/`GiB`
too). Both refuse booleans: YAML 1.1 reads `yes`/`no` as booleans, and they are never a number.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE_SECONDS = re.compile(rf"(-?){_NUMBER}")
_WITH_UNITS = re.compile(rf"(-?)(?:{_NUMBER}(?:ms|s|m|h))+")
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_DURATION_HELP = "(use 250ms, 2s, 1m, 1h or seconds)"

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SIZE = re.compile(r"(-?\d+)\s*(?:([kmg])(?:i?b)?|(b))?", re.IGNORECASE)
_SIZE_HELP = "(use 512, 64KB, 8MB or 1GB)"


def parse_duration(value: str | int | float) -> float:
    """Seconds from `250ms`, `2s`, `1m`, `1h`, `1m30s` or a bare number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r} {_DURATION_HELP}")
    if isinstance(value, str):
        seconds = _duration_text(value.strip())
        if seconds is None:
            raise ValueError(f"invalid duration {value!r} {_DURATION_HELP}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {value!r} {_DURATION_HELP}")
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    return seconds


def _duration_text(text: str) -> float | None:
    if bare := _BARE_SECONDS.fullmatch(text):
        return float(text) if not bare.group(1) else -float(text[1:])
    if units := _WITH_UNITS.fullmatch(text):
        total = sum(
            float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)
        )
        return -total if units.group(1) else total
    return None


def parse_size(value: str | int) -> int:
    """Bytes from `512`, `64KB`, `8MB`, `1GB` (powers of 1024, any case, optional space)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid size {value!r} {_SIZE_HELP}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"invalid size {value!r} {_SIZE_HELP}")
        number, unit, _bytes = match.groups()
        size = int(number) * _SIZE_UNITS[(unit or "").lower()]
    if size < 0:
        raise ValueError(f"invalid size {value!r}: must not be negative")
    return size


def format_duration(seconds: float) -> str:
    """The shortest of `250ms`, `2s`, `30m`, `1h` that states `seconds` exactly, else seconds."""
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        count = seconds / factor
        if seconds and count >= 1 and math.isclose(count, round(count)):
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """`64MB`, `8KB` or plain bytes, whichever states `size` exactly."""
    for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
