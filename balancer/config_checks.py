"""The checks of plain values in the YAML file (SPEC §2): each turns a value, as the walk
(config_walk.py) read it, into a field's value, or raises ValueError saying what is wrong.

The section dataclasses (config_sections.py) name these in their fields' metadata.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from balancer.durations import parse_duration, parse_size

STRATEGY_NAMES: tuple[str, ...] = (
    "round_robin",
    "weighted",
    "least_connections",
    "response_time",
    "adaptive",
    "p2c",
    "consistent_hash",
)
STICKY_MODES = ("off", "cookie", "learn", "header", "ip")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
HASH_SOURCES = ("ip", "header", "cookie")


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()}; YAML reads yes/no/on/off as booleans)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return repr(value)


def quoted(value: Any, *kinds: str) -> str:
    """`describe`, but a string that YAML would read as one of `kinds` (int, float, bool)
    without its quotes is named as such: quoting a number is the likely mistake."""
    if isinstance(value, str):
        tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        if tag.rpartition(":")[2] in kinds:
            return f"the string {value!r} (remove the quotes)"
    return describe(value)


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {quoted(value, 'int')}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


def number(low: float, high: float | None = None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {quoted(value, 'int', 'float')}")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ValueError(f"must be {allowed}, got {value:g}")
        return float(value)

    return check


def duration(positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a duration (250ms, 2s, 1m, 1h), got {describe(value)}")
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return seconds

    return check


POSITIVE, DURATION = duration(positive=True), duration(positive=False)


def size(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a size (512, 64KB, 8MB, 1GB), got {describe(value)}")
        parsed = parse_size(value)
        if parsed < minimum:
            raise ValueError(f"must be at least {minimum} bytes, got {value!r}")
        return parsed

    return check


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {describe(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {quoted(value, 'bool')}")
    return value


def choice(noun: str, names: tuple[str, ...], key: str) -> Callable[[Any], str]:
    """One of `names`; a list of one (`strategy: [weighted]`) is shown how to write it as `key`."""

    def check(value: Any) -> str:
        if value in names:
            return str(value)
        valid = f"(valid: {', '.join(names)})"
        if isinstance(value, str):
            raise ValueError(f"unknown {noun} {value!r} {valid}{suggest(value, list(names))}")
        if not isinstance(value, list):
            raise ValueError(f"expected a {noun} name, got {describe(value)} {valid}")
        shown = f"[{', '.join(str(item) for item in value)}]"
        fix = f"; write {key}: {value[0]}" if len(value) == 1 and value[0] in names else f" {valid}"
        raise ValueError(f"expected a {noun} name, got a list ({shown}){fix}")

    return check


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2: header and cookie names


def token(value: Any) -> str:
    if not _TOKEN.fullmatch(text(value)):
        raise ValueError(f"expected a header or cookie name (letters, digits, -_.), got {value!r}")
    return str(value)


def log_path(value: Any) -> str:
    """`-` (stderr) or a file's path: text, no NUL, not a directory's (a trailing `/`)."""
    written = text(value)
    if not written or "\0" in written or written.endswith("/"):
        raise ValueError(f"expected - (stderr) or a file's path, got {value!r}")
    return written


def path(value: Any) -> str:
    if not text(value).startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return str(value)


# RFC 9112 3.2.1 origin-form is absolute-path ["?" query] of RFC 3986 pchar, "/" and "?":
# visible ASCII only, anything else percent-encoded (SPEC §2 health_check.path).
_TARGET_PART = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?-]+|%[0-9A-Fa-f]{2}")


def origin_form(value: Any) -> str:
    """A request target the health check can put on its request line as it is."""
    target = path(value)
    at = 0
    while at < len(target):
        if part := _TARGET_PART.match(target, at):
            at = part.end()
            continue
        char = target[at]
        if char == "%":
            why = "'%' must start a percent-encoding such as %20 (a '%' itself is %25)"
        elif "!" <= char <= "~":
            why = f"{char!r} is not allowed in an origin-form target (RFC 9112 3.2.1)"
            why += ": percent-encode it"
        else:
            why = f"{char!r} is not visible ASCII (RFC 9112 3.2.1): percent-encode it"
        raise ValueError(f"{why}, got {target!r}")
    return target


def media_type(value: Any) -> str:
    if "/" not in text(value):
        raise ValueError(f"expected a media type such as text/html or text/*, got {value!r}")
    return str(value)


def list_of(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list such as [a, b], got {describe(value)}")
        return tuple(item(one) for one in value)

    return check


def statuses(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f"expected a list of status codes such as [500, 503], got {describe(value)}"
        )
    codes = tuple(integer(100)(one) for one in value)
    for status in codes:
        if not 500 <= status <= 599:
            raise ValueError(f"only 5xx statuses can count as failures, got {status}")
    return codes


def address(value: Any) -> Address:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); port 0 binds a free port."""
    usage = f"expected host:port such as 0.0.0.0:8080 or [::1]:8080, got {describe(value)}"
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(usage)
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets, e.g. [::1]:8080, got {value!r}")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"port must be 0..65535, got {value!r}")
    if any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(usage)
    return Address(host or "0.0.0.0", int(port))


def workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a number >= 1 or 'auto', got {quoted(value, 'int')}")
    return value


def log_level(value: Any) -> str:
    names = tuple(name.lower() for name in LOG_LEVELS)
    if isinstance(value, list):
        value = [item.lower() if isinstance(item, str) else item for item in value]
    return choice("log level", names, "log_level")(
        value.lower() if isinstance(value, str) else value
    ).upper()


strategy = choice("strategy", STRATEGY_NAMES, "strategy")


# Read as text (config_walk's `_value`), `mode: off` is "off" although YAML 1.1 would make it false.
sticky_mode = choice("sticky mode", STICKY_MODES, "mode")


def redis_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not text(value).startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
    return str(value)


def admin_token(value: Any) -> str:
    return "" if value is None else text(value)


secret = admin_token  # text, or empty when null


def optional_token(value: Any) -> str | None:
    return None if value is None else token(value)


# --- alerts (SPEC §2 `alerts`, §6) ---------------------------------------------------------

SEVERITIES = ("low", "medium", "high", "critical")
# The traffic the alert rules judge is window.py's samples: one every 2 s, the last 5 minutes
# kept (window.INTERVAL, window.HISTORY; config cannot import window, tests check they agree).
ALERT_WINDOW_MIN, ALERT_WINDOW_MAX = 2.0, 300.0
# Each evaluation reads every backend's state (with workers: asks every worker for /status).
ALERT_INTERVAL_MIN = 0.1

severity = choice("severity", SEVERITIES, "severity")


def alert_interval(value: Any) -> float:
    seconds = POSITIVE(value)
    if seconds < ALERT_INTERVAL_MIN:
        raise ValueError(
            f"must be at least {ALERT_INTERVAL_MIN * 1000:g}ms (each evaluation reads every "
            f"backend's state), got {value!r}"
        )
    return seconds


def alert_window(value: Any) -> float:
    """`over`: the traffic judged, within what window.py keeps and no shorter than a sample."""
    seconds = DURATION(value)
    if seconds > ALERT_WINDOW_MAX:
        raise ValueError(
            f"must be at most 5m (the traffic kept is the last five minutes), got {value!r}"
        )
    if seconds < ALERT_WINDOW_MIN:
        raise ValueError(
            f"must be at least {ALERT_WINDOW_MIN:g}s (traffic is sampled every "
            f"{ALERT_WINDOW_MIN:g}s), got {value!r}"
        )
    return seconds


def latency(value: Any) -> float:
    """A latency threshold: a duration (`1s`, `250ms`, or bare seconds), 0 or more."""
    return DURATION(value)


ratio = number(0, 1)


def webhook(value: Any) -> str:
    """An http:// or https:// URL to POST alerts to, or "" for none."""
    if value is None or value == "":
        return ""
    url = text(value).strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port out of range raises here)
    except ValueError:
        raise ValueError(f"not a valid URL, got {url!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
    if parts.fragment or "#" in url:
        raise ValueError(f"a fragment is never sent: remove it, got {url!r}")
    return url


def shown_url(url: str) -> str:
    """A webhook URL as logs and summaries show it: scheme://host[:port]/... with nothing of
    its credentials, path or query, which may hold a secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    rest = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"
