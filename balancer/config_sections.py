"""The YAML file's sections (SPEC §2) as frozen dataclasses: `Config` and the section types.

Each section is a dataclass whose fields are the table of its keys: a field's default is the
SPEC default, its metadata the check (config_checks.py) that turns the YAML value into the
field's value (`_rule`, `_text_rule`), and a field whose default is a section dataclass is that
section. The walk over the YAML (config_walk.py) reads the tables from here; nothing here knows
YAML.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from balancer import config_checks as checks
from balancer.config_checks import Address

KB, MB = 1024, 1024 * 1024


def _rule(check: Callable[[Any], Any]) -> dict[str, Any]:
    """The metadata of a field whose YAML value `check` turns into the field's value."""
    return {"check": check}


def _text_rule(check: Callable[[Any], Any]) -> dict[str, Any]:
    """The same for a field of text, which takes the text as written (config_walk's `_value`)."""
    return {"check": check, "text": True}


def _walked() -> dict[str, Any]:
    """The metadata of a field the walk reads by a walk of its own (config_walk's `_WALKED`)."""
    return {"walked": True}


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: Address = field(default=Address("127.0.0.1", 9090), metadata=_text_rule(checks.address))
    token: str = field(default="", metadata=_text_rule(checks.admin_token))


@dataclass(frozen=True, slots=True)
class HashConfig:
    on: str = field(
        default="ip", metadata=_text_rule(checks.choice("hash source", checks.HASH_SOURCES, "on"))
    )
    name: str | None = field(default=None, metadata=_text_rule(checks.optional_token))


@dataclass(frozen=True, slots=True)
class AdaptiveWeights:
    connections: float = field(default=0.4, metadata=_rule(checks.number(0)))
    response_time: float = field(default=0.3, metadata=_rule(checks.number(0)))
    cpu: float = field(default=0.2, metadata=_rule(checks.number(0)))
    memory: float = field(default=0.1, metadata=_rule(checks.number(0)))


@dataclass(frozen=True, slots=True)
class AdaptiveConfig:
    weights: AdaptiveWeights = field(default_factory=AdaptiveWeights)
    # The requests in flight that make adaptive's connections term 1 for a backend without a
    # max_connections of its own (SPEC §2); the default was chosen by measurement (README,
    # "Strategies: which to pick").
    capacity: int = field(default=32, metadata=_rule(checks.integer(1)))


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
    path: str = field(default="/health", metadata=_text_rule(checks.origin_form))
    interval: float = field(default=5.0, metadata=_rule(checks.POSITIVE))
    timeout: float = field(default=2.0, metadata=_rule(checks.POSITIVE))
    rise: int = field(default=2, metadata=_rule(checks.integer(1)))
    fall: int = field(default=3, metadata=_rule(checks.integer(1)))


@dataclass(frozen=True, slots=True)
class CircuitBreakerConfig:
    failure_threshold: int = field(default=5, metadata=_rule(checks.integer(1)))
    reset_timeout: float = field(default=60.0, metadata=_rule(checks.POSITIVE))
    # Backend statuses that count as failures (connect errors, resets and timeouts always do;
    # a 4xx never: it is the client's fault). An extension of SPEC §2.
    failure_statuses: tuple[int, ...] = field(
        default=(500, 502, 503, 504), metadata=_rule(checks.statuses)
    )


@dataclass(frozen=True, slots=True)
class StickyConfig:
    mode: str = field(default="off", metadata=_text_rule(checks.sticky_mode))
    cookie: str = field(default="lb_session", metadata=_text_rule(checks.token))
    header: str = field(default="X-Session-Id", metadata=_text_rule(checks.token))
    ttl: float = field(default=1800.0, metadata=_rule(checks.POSITIVE))
    cookie_explicit: bool = False  # learn mode needs the app's cookie name, never our default
    # Cookie mode's HMAC key (SPEC §2); empty: random, shared through Redis with SET NX.
    secret: str = field(default="", repr=False, metadata=_text_rule(checks.secret))


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str | None = field(default=None, metadata=_text_rule(checks.redis_url))
    timeout: float = field(default=0.05, metadata=_rule(checks.POSITIVE))  # per call (SPEC §2)


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect: float = field(default=2.0, metadata=_rule(checks.POSITIVE))
    read: float = field(default=30.0, metadata=_rule(checks.POSITIVE))
    client_header: float = field(default=10.0, metadata=_rule(checks.POSITIVE))
    client_idle: float = field(default=60.0, metadata=_rule(checks.POSITIVE))
    # Extensions of SPEC §2, as nginx's client_body_timeout and send_timeout: the longest a
    # client may send no body bytes mid-request (408), or take no response bytes (cut).
    client_body: float = field(default=60.0, metadata=_rule(checks.POSITIVE))
    client_send: float = field(default=60.0, metadata=_rule(checks.POSITIVE))
    # A pooled backend connection idle longer than this is closed rather than reused: many
    # app servers close idle keep-alive connections after a few seconds (gunicorn: 2 s), and
    # reusing one they are about to close turns a request into a 502.
    upstream_idle: float = field(default=1.5, metadata=_rule(checks.POSITIVE))
    # A WebSocket tunnel with no bytes either way this long is closed (SPEC §2).
    tunnel_idle: float = field(default=3600.0, metadata=_rule(checks.POSITIVE))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_request_line: int = field(default=8 * KB, metadata=_rule(checks.size(1)))
    max_header_line: int = field(default=8 * KB, metadata=_rule(checks.size(1)))
    max_head: int = field(default=64 * KB, metadata=_rule(checks.size(1)))
    max_headers: int = field(default=100, metadata=_rule(checks.integer(1)))
    max_body: int = field(default=0, metadata=_rule(checks.size(0)))  # 0 = no limit
    max_connections: int = field(default=10000, metadata=_rule(checks.integer(1)))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Where requests wait when every candidate is at its max_connections (HAProxy's queue)."""

    size: int = field(default=100, metadata=_rule(checks.integer(0)))
    timeout: float = field(default=5.0, metadata=_rule(checks.POSITIVE))


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    percent: float = field(default=20.0, metadata=_rule(checks.number(0, 100)))
    min_concurrency: int = field(default=3, metadata=_rule(checks.integer(0)))


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = field(default=False, metadata=_rule(checks.boolean))
    paths: tuple[str, ...] = field(default=("/",), metadata=_text_rule(checks.list_of(checks.path)))
    max_memory: int = field(default=64 * MB, metadata=_rule(checks.size(1)))
    max_object_size: int = field(default=8 * MB, metadata=_rule(checks.size(1)))
    default_ttl: float = field(default=0.0, metadata=_rule(checks.DURATION))
    shared: bool = field(default=True, metadata=_rule(checks.boolean))


_COMPRESSIBLE = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
)


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    enabled: bool = field(default=False, metadata=_rule(checks.boolean))
    min_size: int = field(default=1 * KB, metadata=_rule(checks.size(0)))
    types: tuple[str, ...] = field(
        default=_COMPRESSIBLE, metadata=_text_rule(checks.list_of(checks.media_type))
    )


@dataclass(frozen=True, slots=True)
class AlertRuleConfig:
    """One rule of `alerts.rules` (SPEC §2): its name (alerts.py's rule of that name judges
    it), its severity, and for the threshold rules the threshold and the window judged."""

    name: str
    severity: str
    above: float | None = None  # error_ratio: a ratio 0..1; latency_p95/p99: seconds
    over: float | None = None  # seconds of traffic judged (at most window.HISTORY)


# SPEC §2's rules and their defaults, in the order /alerts and the README list them. A rule
# with `above` takes `above` and `over` in the file; the others take only `severity`.
ALERT_RULES: tuple[AlertRuleConfig, ...] = (
    AlertRuleConfig("backend_down", "critical"),
    AlertRuleConfig("no_backend", "critical"),
    AlertRuleConfig("breaker_open", "high"),
    AlertRuleConfig("error_ratio", "high", 0.05, 60.0),
    AlertRuleConfig("latency_p95", "medium", 1.0, 60.0),
    AlertRuleConfig("latency_p99", "medium", 2.0, 60.0),
    AlertRuleConfig("store_down", "medium"),
)


@dataclass(frozen=True, slots=True)
class CooldownConfig:
    """Per severity: a new `firing` of the same rule and backend within this long of the
    previous one sent waits until it has passed (SPEC §6)."""

    low: float = field(default=300.0, metadata=_rule(checks.DURATION))
    medium: float = field(default=180.0, metadata=_rule(checks.DURATION))
    high: float = field(default=60.0, metadata=_rule(checks.DURATION))
    critical: float = field(default=30.0, metadata=_rule(checks.DURATION))


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    enabled: bool = field(default=True, metadata=_rule(checks.boolean))
    interval: float = field(default=10.0, metadata=_rule(checks.alert_interval))
    # The rules that are on, each with its settings (`off` drops one): walked by config_walk.
    rules: tuple[AlertRuleConfig, ...] = field(default=ALERT_RULES, metadata=_walked())
    # May carry a secret (a token in its path or query): never shown in full (repr, logs).
    webhook: str = field(default="", repr=False, metadata=_text_rule(checks.webhook))
    cooldown: CooldownConfig = field(default_factory=CooldownConfig)

    def rule(self, name: str) -> AlertRuleConfig | None:
        return next((rule for rule in self.rules if rule.name == name), None)


ACCESS_LOG_FORMATS = ("off", "text", "json")


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    format: str = field(
        default="off",
        metadata=_text_rule(checks.choice("access log format", ACCESS_LOG_FORMATS, "format")),
    )
    path: str = field(default="-", metadata=_text_rule(checks.log_path))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    backends: tuple[BackendConfig, ...] = field(metadata=_walked())  # a list of mappings
    listen: Address = field(default=Address("0.0.0.0", 8080), metadata=_text_rule(checks.address))
    workers: int = field(default=1, metadata=_rule(checks.workers))
    # `workers: auto` (or `--workers auto`): several workers in the rule of `check_workers`
    # whatever the CPU count, so a file that passes on a laptop passes on one CPU too.
    workers_auto: bool = field(default=False, compare=False)
    log_level: str = field(default="INFO", metadata=_text_rule(checks.log_level))
    shutdown_timeout: float = field(default=30.0, metadata=_rule(checks.DURATION))
    # Reload when the file changes, as SIGHUP does (an extension of SPEC §6; off by default).
    watch: bool = field(default=False, metadata=_rule(checks.boolean))
    admin: AdminConfig = field(default_factory=AdminConfig)
    strategy: str = field(default="round_robin", metadata=_text_rule(checks.strategy))
    hash: HashConfig = field(default_factory=HashConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    sticky: StickyConfig = field(default_factory=StickyConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    retries: int = field(default=1, metadata=_rule(checks.integer(0)))
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    slow_start: float = field(default=0.0, metadata=_rule(checks.DURATION))
    cache: CacheConfig = field(default_factory=CacheConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    access_log: AccessLogConfig = field(default_factory=AccessLogConfig)
    # Evaluated in process, shown at GET /alerts (SPEC §2, §6; alerts.py).
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    source: str = "<string>"  # the file it was read from
    # Where the file sets each key (key path -> line), for the warnings that point at one.
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
