"""What is valid but probably not what was meant: warnings, never errors (exit 0).

`config_warnings` is pure, over the parsed Config and the lines its keys were read from
(`Config.lines`), so `balancer --check` prints and the start logs the same list.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from balancer.config import Config, Problem
from balancer.durations import format_duration

# The strategies that share by weight; the others only honour weight 0 (no new requests).
WEIGHTED_STRATEGIES = ("weighted", "least_connections", "consistent_hash")


def config_warnings(config: Config) -> list[Problem]:
    """Every warning about `config`, ordered by line."""
    found = [*_weights(config), *_health_check(config), *_ports(config)]
    return sorted(found, key=lambda p: (p.line is None, p.line or 0))


def _warning(config: Config, path: str, message: str) -> Problem:
    return Problem(path, message, config.lines.get(path))


def _weights(config: Config) -> list[Problem]:
    if all(backend.weight == 0 for backend in config.backends):
        message = "every backend has weight 0: nothing will be routed (every request gets 503)"
        return [_warning(config, "backends", message)]
    if config.strategy in WEIGHTED_STRATEGIES:
        return []
    heavy = [(i, b.weight) for i, b in enumerate(config.backends) if b.weight > 1]
    if not heavy:
        return []
    index, weight = heavy[0]
    message = (
        f"{config.strategy} ignores weights (only 0 counts: no new requests): weight {weight} "
        "gets the same share as 1; write strategy: weighted to share by weight"
    )
    if len(heavy) > 1:
        message += f" ({len(heavy) - 1} more backend(s) have a weight above 1)"
    return [_warning(config, f"backends[{index}].weight", message)]


def _health_check(config: Config) -> list[Problem]:
    check = config.health_check
    if check.timeout <= check.interval:
        return []
    timeout, interval = format_duration(check.timeout), format_duration(check.interval)
    message = (
        f"{timeout} is longer than health_check.interval ({interval}): a probe still running "
        f"delays the next, so a backend that stops answering is probed every "
        f"{format_duration(check.timeout + check.interval)} (timeout + interval), "
        f"not every {interval}"
    )
    return [_warning(config, "health_check.timeout", message)]


def _ports(config: Config) -> list[Problem]:
    found = []
    for index, backend in enumerate(config.backends):
        if urlsplit(backend.url).port is None:
            message = f"no port: {backend.port} is assumed ({backend.scheme}'s default)"
            found.append(_warning(config, f"backends[{index}].url", message))
    return found
