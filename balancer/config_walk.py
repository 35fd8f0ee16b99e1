"""The walk over the YAML file (SPEC §2): parsed YAML -> the sections (config_sections.py),
with every problem reported at once.

`parse_config` is one pure function: it composes the YAML into nodes, which carry their line,
and walks them itself, so each problem names its key path and line. Nothing bad is repaired
quietly: an unknown key, a wrong type or a value out of range is a problem, and all of them are
raised together in one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from balancer import config_checks as checks
from balancer.config_sections import (
    ALERT_RULES,
    AdaptiveWeights,
    AlertRuleConfig,
    BackendConfig,
    Config,
    HashConfig,
    StickyConfig,
)


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


def _fields(
    walk: _Walk, node: yaml.Node, path: str, table: Mapping[str, Convert], noun: str = "key"
) -> _Fields:
    """Convert a mapping's values by `table`; report unknown, duplicate and non-text keys
    (an unknown one as an unknown `noun`)."""
    out = _Fields({}, {})
    if not isinstance(node, yaml.MappingNode):
        got = checks.describe(_value(walk, node, path))
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
            hint = checks.suggest(key, list(table)) or f" (valid: {', '.join(table)})"
            walk.problem(path, f"unknown {noun} '{key}'{hint}", key_node)
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
    """A section's keys and their converters, read from its dataclass fields: a field's
    metadata names its check (config_sections.py), or that it is walked by `_WALKED`."""
    table: dict[str, Convert] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("walked"):
            table[f.name] = _WALKED[f.name]
        elif "check" in f.metadata:
            table[f.name] = _scalar(f.metadata["check"], text=f.metadata.get("text", False))
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


# --- the checks of a section as a whole, once each of its keys passed --------------------


def _finish_hash(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    on = fields.values.get("on", "ip")
    if on in ("header", "cookie") and fields.values.get("name") is None:
        message = f"required when on is {on}: the {on} to hash"
        walk.problem(_join(path, "name"), message, fields.nodes["on"])


def _finish_weights(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    if not any(weight > 0 for weight in dataclasses.astuple(AdaptiveWeights(**fields.values))):
        walk.problem(path, "at least one weight must be greater than 0", node)


def _finish_sticky(walk: _Walk, fields: _Fields, path: str, node: yaml.Node) -> None:
    fields.values["cookie_explicit"] = explicit = "cookie" in fields.nodes
    if fields.values.get("mode") == "learn" and not explicit:
        message = "learn mode needs the app's session cookie name"
        walk.problem(_join(path, "cookie"), message, fields.nodes["mode"])


_FINISH: dict[type, Finish] = {
    HashConfig: _finish_hash,
    AdaptiveWeights: _finish_weights,
    StickyConfig: _finish_sticky,
}


# --- the keys walked by a walk of their own: the backends list ---------------------------


def _backend_url(value: Any) -> BackendConfig:
    """`http://host:port` or `https://host:port`, as a BackendConfig named after it."""
    text = checks.text(value).strip()
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
    if not checks.text(value) or any(c.isspace() or c == "/" for c in value):
        raise ValueError(f"must be a non-empty name without spaces or '/', got {value!r}")
    return str(value)


_BACKEND: dict[str, Convert] = {
    "url": _scalar(_backend_url, text=True),
    "name": _scalar(_backend_name, text=True),
    "weight": _scalar(checks.integer(0)),
    "backup": _scalar(checks.boolean),
    "max_connections": _scalar(checks.integer(0)),
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
        got = checks.describe(_value(walk, node, path))
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


# The threshold of each rule that has one (its `above` and `over` keys): a ratio or seconds.
_THRESHOLDS: dict[str, Callable[[Any], float]] = {
    "error_ratio": checks.ratio,
    "latency_p95": checks.latency,
    "latency_p99": checks.latency,
}


def _alert_rule(default: AlertRuleConfig) -> Convert:
    """One rule of alerts.rules: a mapping of its settings over its defaults, null for the
    defaults, or `off` (quoted or bare: read as text) to drop it (None)."""
    table: dict[str, Convert] = {"severity": _scalar(checks.severity, text=True)}
    if default.name in _THRESHOLDS:
        table["above"] = _scalar(_THRESHOLDS[default.name])
        table["over"] = _scalar(checks.alert_window)

    def convert(walk: _Walk, node: yaml.Node, path: str) -> Any:
        if _is_null(node):
            return default
        if isinstance(node, yaml.ScalarNode) and node.value == "off":
            return None
        if not isinstance(node, yaml.MappingNode):
            got = checks.describe(_value(walk, node, path))
            example = "{above: 0.05, over: 1m, severity: high}" if len(table) > 1 else ""
            example = example or "{severity: critical}"
            walk.problem(path, f"expected a mapping such as {example}, or off; got {got}", node)
            return _BAD
        before = len(walk.problems)
        fields = _fields(walk, node, path, table)
        if len(walk.problems) > before:
            return _BAD
        return dataclasses.replace(default, **fields.values)

    return convert


def _alert_rules(walk: _Walk, node: yaml.Node, path: str) -> Any:
    """alerts.rules: SPEC §2's rules, each as the file sets it (the others at their defaults),
    those set to off dropped; an unknown rule name is a problem, with a suggestion."""
    if _is_null(node):
        return ALERT_RULES
    table = {rule.name: _alert_rule(rule) for rule in ALERT_RULES}
    before = len(walk.problems)
    fields = _fields(walk, node, path, table, noun="rule")
    if len(walk.problems) > before:
        return _BAD
    chosen = (fields.values.get(rule.name, rule) for rule in ALERT_RULES)
    return tuple(rule for rule in chosen if rule is not None)


_WALKED: dict[str, Convert] = {
    "backends": _backends,
    "rules": _alert_rules,
}


# --- the entry point ---------------------------------------------------------------------


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
        got = checks.describe(_value(walk, root, ""))
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
