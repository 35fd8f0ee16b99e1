"""The YAML file (SPEC §2) -> frozen dataclasses, with every problem reported at once.

`parse_config` is one pure function: it composes the YAML into nodes,
which carry their line, and walks them itself, so each problem names its key path and line.
Nothing bad is repaired quietly: an unknown key, a wrong type or a value out of range is a
problem, and all of them are raised together in one `ConfigError`.

Each section is a dataclass whose fields are the table of its keys: a field's default is the
SPEC default, its metadata the check that turns the YAML value into the field's value
(`_rule`), and a field whose default is a section dataclass is that section.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from balancer.durations import format_duration, format_size
from balancer.durations import parse_duration as parse_duration  # re-exported: the public API
from balancer.durations import parse_size as parse_size
from balancer.inactive import inactive

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
KB, MB = 1024, 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the file: where (key path, line) and what."""

    path: str
    message: str
    line: int | None

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem found in one file; `lines()` is what `balancer --check` prints."""

    def __init__(self, problems: tuple[Problem, ...], source: str) -> None:
        super().__init__(problems, source)
        self.problems = problems
        self.source = source

    def lines(self) -> list[str]:
        ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))
        return [problem.render(self.source) for problem in ordered]

    def __str__(self) -> str:
        return "\n".join(self.lines())


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# --- checks of plain values: each returns the field's value or raises ValueError -----------


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()}; YAML reads yes/no/on/off as booleans)"
    if value is None:
        return "nothing (null)"
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    return repr(value)


def _quoted(value: Any, *kinds: str) -> str:
    """`_describe`, but a string that YAML would read as one of `kinds` (int, float, bool)
    without its quotes is named as such: quoting a number is the likely mistake."""
    if isinstance(value, str):
        tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        if tag.rpartition(":")[2] in kinds:
            return f"the string {value!r} (remove the quotes)"
    return _describe(value)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {_quoted(value, 'int')}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return check


def _number(low: float, high: float | None = None) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_quoted(value, 'int', 'float')}")
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise ValueError(f"must be {allowed}, got {value:g}")
        return float(value)

    return check


def _duration(positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"expected a duration (250ms, 2s, 1m, 1h), got {_describe(value)}")
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"must be greater than 0, got {value!r}")
        return seconds

    return check


_POSITIVE, _DURATION = _duration(positive=True), _duration(positive=False)


def _size(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a size (512, 64KB, 8MB, 1GB), got {_describe(value)}")
        size = parse_size(value)
        if size < minimum:
            raise ValueError(f"must be at least {minimum} bytes, got {value!r}")
        return size

    return check


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {_describe(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_quoted(value, 'bool')}")
    return value


def _choice(noun: str, names: tuple[str, ...], key: str) -> Callable[[Any], str]:
    """One of `names`; a list of one (`strategy: [weighted]`) is shown how to write it as `key`."""

    def check(value: Any) -> str:
        if value in names:
            return str(value)
        valid = f"(valid: {', '.join(names)})"
        if isinstance(value, str):
            raise ValueError(f"unknown {noun} {value!r} {valid}{_suggest(value, list(names))}")
        if not isinstance(value, list):
            raise ValueError(f"expected a {noun} name, got {_describe(value)} {valid}")
        shown = f"[{', '.join(str(item) for item in value)}]"
        fix = f"; write {key}: {value[0]}" if len(value) == 1 and value[0] in names else f" {valid}"
        raise ValueError(f"expected a {noun} name, got a list ({shown}){fix}")

    return check


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2: header and cookie names


def _token(value: Any) -> str:
    if not _TOKEN.fullmatch(_text(value)):
        raise ValueError(f"expected a header or cookie name (letters, digits, -_.), got {value!r}")
    return str(value)


def _path(value: Any) -> str:
    if not _text(value).startswith("/"):
        raise ValueError(f"must start with '/', got {value!r}")
    return str(value)


# RFC 9112 3.2.1 origin-form is absolute-path ["?" query] of RFC 3986 pchar, "/" and "?":
# visible ASCII only, anything else percent-encoded (SPEC §2 health_check.path).
_TARGET_PART = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/?-]+|%[0-9A-Fa-f]{2}")


def _origin_form(value: Any) -> str:
    """A request target the health check can put on its request line as it is."""
    text = _path(value)
    at = 0
    while at < len(text):
        if part := _TARGET_PART.match(text, at):
            at = part.end()
            continue
        char = text[at]
        if char == "%":
            why = "'%' must start a percent-encoding such as %20 (a '%' itself is %25)"
        elif "!" <= char <= "~":
            why = f"{char!r} is not allowed in an origin-form target (RFC 9112 3.2.1)"
            why += ": percent-encode it"
        else:
            why = f"{char!r} is not visible ASCII (RFC 9112 3.2.1): percent-encode it"
        raise ValueError(f"{why}, got {text!r}")
    return text


def _media_type(value: Any) -> str:
    if "/" not in _text(value):
        raise ValueError(f"expected a media type such as text/html or text/*, got {value!r}")
    return str(value)


def _list_of(item: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list such as [a, b], got {_describe(value)}")
        return tuple(item(one) for one in value)

    return check


def _statuses(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ValueError(
            f"expected a list of status codes such as [500, 503], got {_describe(value)}"
        )
    statuses = tuple(_integer(100)(one) for one in value)
    for status in statuses:
        if not 500 <= status <= 599:
            raise ValueError(f"only 5xx statuses can count as failures, got {status}")
    return statuses


def _address(value: Any) -> Address:
    """`host:port`, `[v6]:port` or `:port` (all interfaces); port 0 binds a free port."""
    usage = f"expected host:port such as 0.0.0.0:8080 or [::1]:8080, got {_describe(value)}"
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


def _workers(value: Any) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a number >= 1 or 'auto', got {_quoted(value, 'int')}")
    return value


def _log_level(value: Any) -> str:
    names = tuple(name.lower() for name in LOG_LEVELS)
    if isinstance(value, list):
        value = [item.lower() if isinstance(item, str) else item for item in value]
    return _choice("log level", names, "log_level")(
        value.lower() if isinstance(value, str) else value
    ).upper()


_strategy = _choice("strategy", STRATEGY_NAMES, "strategy")


# Read as text (see `_value`), `mode: off` is "off" although YAML 1.1 would make it false.
_sticky_mode = _choice("sticky mode", STICKY_MODES, "mode")


def _redis_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not _text(value).startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"must start with redis://, rediss:// or unix://, got {value!r}")
    return str(value)


def _admin_token(value: Any) -> str:
    return "" if value is None else _text(value)


_secret = _admin_token  # text, or empty when null


def _optional_token(value: Any) -> str | None:
    return None if value is None else _token(value)


# --- the walk over YAML nodes ------------------------------------------------------------

_BAD: Any = object()  # a value that failed; its problem is already recorded
_STR_TAG, _NULL_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(slots=True)
class _Walk:
    env: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # key path -> line, for Config.lines

    def problem(self, path: str, message: str, node: yaml.Node | None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.problems.append(Problem(path, message, line))


Convert = Callable[[_Walk, yaml.Node, str], Any]  # a node -> a value, or _BAD once reported
Finish = Callable[[_Walk, "_Fields", str, yaml.Node], None]


class _Fields(NamedTuple):
    values: dict[str, Any]  # key -> converted value, for the keys that converted
    nodes: dict[str, yaml.Node]  # key -> value node, for every known key present


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _fields(walk: _Walk, node: yaml.Node, path: str, table: Mapping[str, Convert]) -> _Fields:
    """Convert a mapping's values by `table`; report unknown, duplicate and non-text keys."""
    out = _Fields({}, {})
    if not isinstance(node, yaml.MappingNode):
        got = _describe(_value(walk, node, path))
        walk.problem(path, f"expected a mapping of {', '.join(table)}; got {got}", node)
        return out
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            walk.problem(path, "a key must be a plain name", key_node)
            continue
        key = key_node.value  # the raw text: YAML 1.1 would read a bare `on` key as true
        if key in first_line:
            message = f"duplicate key '{key}' (first at line {first_line[key]})"
            walk.problem(path, message, key_node)
            continue
        first_line[key] = key_node.start_mark.line + 1
        if key not in table:
            hint = _suggest(key, list(table)) or f" (valid: {', '.join(table)})"
            walk.problem(path, f"unknown key '{key}'{hint}", key_node)
            continue
        out.nodes[key] = value_node
        walk.lines[_join(path, key)] = value_node.start_mark.line + 1
        value = table[key](walk, value_node, _join(path, key))
        if value is not _BAD:
            out.values[key] = value
    return out


def _expand(text: str, env: Mapping[str, str]) -> str:
    """`${VAR}` and `${VAR:-default}` (the default when VAR is unset or empty, as in sh)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if default is not None:
            return value or default
        if value is None:
            raise ValueError(f"environment variable {name} is not set")
        return value

    defaults = (match.group(2) or "" for match in _ENV_REF.finditer(text))
    if "${" in _ENV_REF.sub("", text) or any("${" in default for default in defaults):
        raise ValueError(f"malformed ${{...}} in {text!r} (use ${{VAR}} or ${{VAR:-default}})")
    return _ENV_REF.sub(one, text)


def _value(walk: _Walk, node: yaml.Node, path: str, text: bool = False, top: bool = True) -> Any:
    """The Python value of a node, environment expanded; `_BAD` after reporting a problem.

    With `text`, a scalar other than null is its text as written, whatever YAML 1.1 would
    make of it: `mode: off`, `token: 123456` and `token: ${TOKEN}` are all text. Only lists
    of scalars are read: a deeper shape (or a recursive alias) stays an empty list, which
    the checks report by its type.
    """
    if isinstance(node, yaml.SequenceNode):
        if not top:
            return []
        items = [_value(walk, one, f"{path}[{i}]", text, False) for i, one in enumerate(node.value)]
        return _BAD if any(item is _BAD for item in items) else items
    if not isinstance(node, yaml.ScalarNode):
        return {}  # no check takes a mapping: they report it by its type
    if "${" in node.value:
        try:
            expanded = _expand(node.value, walk.env)
        except ValueError as exc:
            walk.problem(path, str(exc), node)
            return _BAD
        tag = node.tag
        if node.style is None and tag == _STR_TAG and expanded:
            # A plain scalar is typed by what it says once expanded: `workers: ${W:-2}` is 2.
            resolver = yaml.resolver.Resolver()
            tag = resolver.resolve(yaml.ScalarNode, expanded, (True, False))  # type: ignore[no-untyped-call]
        node = yaml.ScalarNode(tag, expanded, node.start_mark, node.end_mark, node.style)
    if text and node.tag != _NULL_TAG:
        return node.value
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError) as exc:
        walk.problem(path, f"cannot read this value: {str(exc).splitlines()[0]}", node)
        return _BAD


def _scalar(check: Callable[[Any], Any], text: bool = False) -> Convert:
    """A converter of a node's value (see `_value`) by `check`, whose ValueError is the problem."""

    def convert(walk: _Walk, node: yaml.Node, path: str) -> Any:
        value = _value(walk, node, path, text)
        if value is _BAD:
            return _BAD
        try:
            return check(value)
        except ValueError as exc:
            walk.problem(path, str(exc), node)
            return _BAD

    return convert


def _table(cls: type) -> dict[str, Convert]:
    """A section's keys and their converters, read from its dataclass fields."""
    table = {}
    for f in dataclasses.fields(cls):
        if "convert" in f.metadata:
            table[f.name] = f.metadata["convert"]
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            table[f.name] = _section(f.default_factory)
    return table


def _section(cls: type) -> Convert:
    """A converter of a mapping into `cls(**values)`, checked by `_FINISH[cls]` if any."""

    def convert(walk: _Walk, node: yaml.Node, path: str) -> Any:
        if _is_null(node):
            return cls()
        before = len(walk.problems)
        fields = _fields(walk, node, path, _table(cls))
        finish = _FINISH.get(cls)
        if finish is not None and len(walk.problems) == before:
            finish(walk, fields, path, node)
        return cls(**fields.values) if len(walk.problems) == before else _BAD

    return convert


def _rule(check: Callable[[Any], Any]) -> dict[str, Convert]:
    """The metadata of a field whose YAML value `check` turns into the field's value."""
    return _parts(_scalar(check))


def _text_rule(check: Callable[[Any], Any]) -> dict[str, Convert]:
    """The same for a field of text, which takes the text as written (see `_value`)."""
    return _parts(_scalar(check, text=True))


def _parts(convert: Convert) -> dict[str, Convert]:
    """The metadata of a field that `convert` reads from its node."""
    return {"convert": convert}


# --- the sections ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address = field(default=Address("127.0.0.1", 9090), metadata=_text_rule(_address))
    token: str = field(default="", metadata=_text_rule(_admin_token))


@dataclass(frozen=True, slots=True)
class HashConfig:
    on: str = field(default="ip", metadata=_text_rule(_choice("hash source", HASH_SOURCES, "on")))
    name: str | None = field(default=None, metadata=_text_rule(_optional_token))


def _finish_hash(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    on = fields.values.get("on", "ip")
    if on in ("header", "cookie") and fields.values.get("name") is None:
        message = f"required when on is {on}: the {on} to hash"
        walk.problem(_join(path, "name"), message, fields.nodes["on"])


@dataclass(frozen=True, slots=True)
class AdaptiveWeights:
    connections: float = field(default=0.4, metadata=_rule(_number(0)))
    response_time: float = field(default=0.3, metadata=_rule(_number(0)))
    cpu: float = field(default=0.2, metadata=_rule(_number(0)))
    memory: float = field(default=0.1, metadata=_rule(_number(0)))


def _finish_weights(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    if not any(weight > 0 for weight in dataclasses.astuple(AdaptiveWeights(**fields.values))):
        walk.problem(path, "at least one weight must be greater than 0", node)


def _adaptive(walk: _Walk, node: yaml.Node, path: str) -> Any:
    """`adaptive: {weights: {...}}`, of which Config keeps the weights."""
    if _is_null(node):
        return AdaptiveWeights()
    fields = _fields(walk, node, path, {"weights": _section(AdaptiveWeights)})
    return fields.values.get("weights", AdaptiveWeights())


@dataclass(frozen=True, slots=True)
class BackendConfig:
    url: str
    name: str
    weight: int = 1
    scheme: str = "http"
    host: str = ""
    port: int = 80
    # Extensions of SPEC §2 (issue 4), off by default:
    backup: bool = False  # used only when no primary backend can take traffic
    max_connections: int = 0  # requests in flight at most; past it they queue (0 = no cap)


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    path: str = field(default="/health", metadata=_text_rule(_origin_form))
    interval: float = field(default=5.0, metadata=_rule(_POSITIVE))
    timeout: float = field(default=2.0, metadata=_rule(_POSITIVE))
    rise: int = field(default=2, metadata=_rule(_integer(1)))
    fall: int = field(default=3, metadata=_rule(_integer(1)))


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    failure_threshold: int = field(default=5, metadata=_rule(_integer(1)))
    reset_timeout: float = field(default=60.0, metadata=_rule(_POSITIVE))
    # Backend statuses that count as failures (connect errors, resets and timeouts always do;
    # a 4xx never: it is the client's fault). An extension of SPEC §2.
    failure_statuses: tuple[int, ...] = field(
        default=(500, 502, 503, 504), metadata=_rule(_statuses)
    )


@dataclass(frozen=True, slots=True)
class StickyConfig:
    mode: str = field(default="off", metadata=_text_rule(_sticky_mode))
    cookie: str = field(default="lb_session", metadata=_text_rule(_token))
    header: str = field(default="X-Session-Id", metadata=_text_rule(_token))
    ttl: float = field(default=1800.0, metadata=_rule(_POSITIVE))
    cookie_explicit: bool = False  # learn mode needs the app's cookie name, never our default
    # Cookie mode's HMAC key (SPEC §2); empty: random, shared through Redis with SET NX.
    secret: str = field(default="", repr=False, metadata=_text_rule(_secret))


def _finish_sticky(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    fields.values["cookie_explicit"] = explicit = "cookie" in fields.nodes
    if fields.values.get("mode") == "learn" and not explicit:
        message = "learn mode needs the app's session cookie name"
        walk.problem(_join(path, "cookie"), message, fields.nodes["mode"])


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str | None = field(default=None, metadata=_text_rule(_redis_url))
    timeout: float = field(default=0.05, metadata=_rule(_POSITIVE))  # per call (SPEC §2)


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = field(default=2.0, metadata=_rule(_POSITIVE))
    read: float = field(default=30.0, metadata=_rule(_POSITIVE))
    client_header: float = field(default=10.0, metadata=_rule(_POSITIVE))
    client_idle: float = field(default=60.0, metadata=_rule(_POSITIVE))
    # Extensions of SPEC §2, as nginx's client_body_timeout and send_timeout: the longest a
    # client may send no body bytes mid-request (408), or take no response bytes (cut).
    client_body: float = field(default=60.0, metadata=_rule(_POSITIVE))
    client_send: float = field(default=60.0, metadata=_rule(_POSITIVE))
    # A pooled backend connection idle longer than this is closed rather than reused: many
    # app servers close idle keep-alive connections after a few seconds (gunicorn: 2 s), and
    # reusing one they are about to close turns a request into a 502.
    upstream_idle: float = field(default=1.5, metadata=_rule(_POSITIVE))
    # A WebSocket tunnel with no bytes either way this long is closed (SPEC §2).
    tunnel_idle: float = field(default=3600.0, metadata=_rule(_POSITIVE))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_request_line: int = field(default=8 * KB, metadata=_rule(_size(1)))
    max_header_line: int = field(default=8 * KB, metadata=_rule(_size(1)))
    max_head: int = field(default=64 * KB, metadata=_rule(_size(1)))
    max_headers: int = field(default=100, metadata=_rule(_integer(1)))
    max_body: int = field(default=0, metadata=_rule(_size(0)))  # 0 = no limit
    max_connections: int = field(default=10000, metadata=_rule(_integer(1)))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Where requests wait when every candidate is at its max_connections (HAProxy's queue)."""

    size: int = field(default=100, metadata=_rule(_integer(0)))
    timeout: float = field(default=5.0, metadata=_rule(_POSITIVE))


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    percent: float = field(default=20.0, metadata=_rule(_number(0, 100)))
    min_concurrency: int = field(default=3, metadata=_rule(_integer(0)))


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = field(default=False, metadata=_rule(_boolean))
    paths: tuple[str, ...] = field(default=("/",), metadata=_text_rule(_list_of(_path)))
    max_memory: int = field(default=64 * MB, metadata=_rule(_size(1)))
    max_object_size: int = field(default=8 * MB, metadata=_rule(_size(1)))
    default_ttl: float = field(default=0.0, metadata=_rule(_DURATION))
    shared: bool = field(default=True, metadata=_rule(_boolean))


_COMPRESSIBLE = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
)


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    enabled: bool = field(default=False, metadata=_rule(_boolean))
    min_size: int = field(default=1 * KB, metadata=_rule(_size(0)))
    types: tuple[str, ...] = field(
        default=_COMPRESSIBLE, metadata=_text_rule(_list_of(_media_type))
    )


_FINISH: dict[type, Finish] = {
    HashConfig: _finish_hash,
    AdaptiveWeights: _finish_weights,
    StickyConfig: _finish_sticky,
}


def _backend_url(value: Any) -> BackendConfig:
    """`http://host:port` or `https://host:port`, as a BackendConfig named after it."""
    text = _text(value).strip()
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be http://host:port or https://host:port, got {text!r}")
    if "@" in parts.netloc:
        raise ValueError(f"credentials are not allowed in a backend url, got {text!r}")
    rule = "a backend url is scheme://host:port"
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"a query or fragment is not allowed ({text!r}): {rule}")
    if parts.path not in ("", "/"):
        raise ValueError(f"a path is not allowed ({parts.path!r}): {rule}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"port must be 1..65535, got {text!r}") from None
    scheme, host = parts.scheme.lower(), parts.hostname
    port = port or (443 if scheme == "https" else 80)
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return BackendConfig(f"{scheme}://{parts.netloc}", name, 1, scheme, host, port)


def _backend_name(value: Any) -> str:
    if not _text(value) or any(c.isspace() or c == "/" for c in value):
        raise ValueError(f"must be a non-empty name without spaces or '/', got {value!r}")
    return str(value)


_BACKEND: dict[str, Convert] = {
    "url": _scalar(_backend_url, text=True),
    "name": _scalar(_backend_name, text=True),
    "weight": _scalar(_integer(0)),
    "backup": _scalar(_boolean),
    "max_connections": _scalar(_integer(0)),
}


def _backend(walk: _Walk, node: yaml.Node, path: str) -> tuple[BackendConfig, yaml.Node] | None:
    """One backend and the node its name comes from, or None once its problems are reported."""
    before = len(walk.problems)
    fields = _fields(walk, node, path, _BACKEND)
    if isinstance(node, yaml.MappingNode) and "url" not in fields.nodes:
        walk.problem(path, "missing key 'url' (http://host:port)", node)
    if len(walk.problems) > before:
        return None
    keys = ("name", "weight", "backup", "max_connections")
    changes = {key: fields.values[key] for key in keys if key in fields.values}
    backend = dataclasses.replace(fields.values["url"], **changes)
    return backend, fields.nodes.get("name", fields.nodes["url"])


def _backends(walk: _Walk, node: yaml.Node, path: str) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        got = _describe(_value(walk, node, path))
        walk.problem(
            path, f"expected a list of backends (- url: http://host:port), got {got}", node
        )
        return _BAD
    if not node.value:
        walk.problem(path, "at least one backend is required", node)
        return _BAD
    backends: list[BackendConfig] = []
    first: dict[str, int] = {}
    for index, item in enumerate(node.value):
        found = _backend(walk, item, f"{path}[{index}]")
        if found is None:
            continue
        backend, name_node = found
        if backend.name in first:
            message = f"duplicate name '{backend.name}' (also {path}[{first[backend.name]}])"
            walk.problem(f"{path}[{index}].name", message, name_node)
        first.setdefault(backend.name, index)
        backends.append(backend)
    return tuple(backends)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    backends: tuple[BackendConfig, ...] = field(metadata=_parts(_backends))
    listen: Address = field(default=Address("0.0.0.0", 8080), metadata=_text_rule(_address))
    workers: int = field(default=1, metadata=_rule(_workers))
    # `workers: auto` (or `--workers auto`): several workers in the rule of `check_workers`
    # whatever the CPU count, so a file that passes on a laptop passes on one CPU too.
    workers_auto: bool = field(default=False, compare=False)
    log_level: str = field(default="INFO", metadata=_text_rule(_log_level))
    shutdown_timeout: float = field(default=30.0, metadata=_rule(_DURATION))
    # Reload when the file changes, as SIGHUP does (an extension of SPEC §6; off by default).
    watch: bool = field(default=False, metadata=_rule(_boolean))
    admin: AdminConfig = field(default_factory=AdminConfig)
    strategy: str = field(default="round_robin", metadata=_text_rule(_strategy))
    hash: HashConfig = field(default_factory=HashConfig)
    adaptive: AdaptiveWeights = field(default_factory=AdaptiveWeights, metadata=_parts(_adaptive))
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    sticky: StickyConfig = field(default_factory=StickyConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retries: int = field(default=1, metadata=_rule(_integer(0)))
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    slow_start: float = field(default=0.0, metadata=_rule(_DURATION))
    cache: CacheConfig = field(default_factory=CacheConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    source: str = "<string>"  # the file it was read from
    # Where the file sets each key (key path -> line), for the warnings that point at one.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)


# --- the public functions -----------------------------------------------------------------


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """The Config of a YAML text, or ConfigError with every problem found in it."""
    walk = _Walk(os.environ if env is None else env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = Problem("", f"invalid YAML: {_yaml_message(exc)}", line)
        raise ConfigError((problem,), source) from None
    if root is None or _is_null(root):
        message = "the file is empty: expected settings such as backends:"
        raise ConfigError((Problem("", message, None),), source)
    if not isinstance(root, yaml.MappingNode):
        got = _describe(_value(walk, root, ""))
        walk.problem("", f"expected a mapping of settings (key: value lines), got {got}", root)
        raise ConfigError(tuple(walk.problems), source)
    fields = _fields(walk, root, "", _table(Config))
    if "backends" not in fields.nodes:
        walk.problem("backends", "at least one backend is required", None)
    if walk.problems:
        raise ConfigError(tuple(walk.problems), source)
    if "workers" in fields.values:
        auto = _value(walk, fields.nodes["workers"], "workers", text=True) == "auto"
        fields.values["workers_auto"] = auto
    return check_workers(Config(**fields.values, source=source, lines=MappingProxyType(walk.lines)))


SEVERAL_WORKERS_STICKY = (
    "several workers need redis.url for sticky sessions (a per-worker table would break stickiness)"
)


def check_workers(config: Config, *, from_file: bool = True) -> Config:
    """SPEC §6: sticky sessions must hold across workers, and each worker's in-process table
    is its own, so several workers with sticky sessions need Redis. Run again by the command
    line once `--workers` applies (`from_file=False`: then no line of the file is to blame)."""
    several = config.workers > 1 or config.workers_auto
    if several and config.sticky.mode != "off" and not config.redis.url:
        line = config.lines.get("workers") if from_file else None
        raise ConfigError((Problem("workers", SEVERAL_WORKERS_STICKY, line),), config.source)
    return config


def _yaml_message(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        return exc.problem or exc.context or str(exc)
    return str(exc).splitlines()[0]


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and parse the file at `path`; an unreadable file is a ConfigError too."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError((Problem("", f"cannot read the file: {reason}", None),), source) from None
    return parse_config(text, source, env)


def summary(config: Config) -> str:
    """A few lines for `balancer --check`: where it listens, how it picks, the backends, and
    the keys set that nothing acts on yet (a feature is claimed only once it leaves that list)."""
    sticky = config.sticky.mode
    if sticky != "off":
        redis = config.redis.url and re.sub(r"//[^@/]*@", "//***@", config.redis.url)
        sticky += f" (store: {f'redis {redis}' if redis else 'memory'})"
    t, check, budget = config.timeouts, config.health_check, config.retry_budget
    pending = inactive(config)
    keys = {entry.key for entry in pending}
    token = " (token required)" if config.admin.token else " (no token)"
    lines = [
        f"listen {config.listen}, workers {config.workers}, log level {config.log_level}",
        f"admin {config.admin.listen}{'' if 'admin.token' in keys else token}",
        f"strategy {config.strategy}, sticky {sticky}",
        f"backends ({len(config.backends)}):",
        *(f"  {b.name}  {b.url}  weight {b.weight}" for b in config.backends),
        f"health check GET {check.path} every {format_duration(check.interval)}",
        f"timeouts connect {format_duration(t.connect)}, read {format_duration(t.read)}, "
        f"client header {format_duration(t.client_header)}, "
        f"client idle {format_duration(t.client_idle)}",
        f"retries {config.retries} (budget {budget.percent:g}%, at least {budget.min_concurrency})",
    ]
    if config.cache.enabled and "cache" not in keys:
        lines.append(f"cache on, {format_size(config.cache.max_memory)} in memory")
    if config.compression.enabled and "compression" not in keys:
        lines.append(f"compression on, from {format_size(config.compression.min_size)}")
    lines.extend(entry.notice for entry in pending)
    return "\n".join(lines)
