"""The YAML file (SPEC §2) -> frozen dataclasses, with every problem reported at once: the
public entry points (`load_config`, `parse_config`, `check_workers`, `summary`) and the types.

Three modules do the work: config_sections.py the frozen `Config` and its section dataclasses
(each one's fields the table of its keys), config_checks.py the checks of plain values their
fields name, config_walk.py the walk over the YAML nodes that turns the file into them, with
each problem's key path and line. Import from here: this module is the API.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from balancer.config_checks import (
    HASH_SOURCES,
    LOG_LEVELS,
    SEVERITIES,
    STICKY_MODES,
    STRATEGY_NAMES,
    Address,
    shown_url,
)
from balancer.config_sections import (
    ALERT_RULES,
    KB,
    MB,
    AccessLogConfig,
    AdaptiveConfig,
    AdaptiveWeights,
    AdminConfig,
    AlertRuleConfig,
    AlertsConfig,
    BackendConfig,
    CacheConfig,
    CircuitBreakerConfig,
    CompressionConfig,
    Config,
    CooldownConfig,
    HashConfig,
    HealthCheckConfig,
    LimitsConfig,
    QueueConfig,
    RedisConfig,
    RetryBudgetConfig,
    StickyConfig,
    TimeoutsConfig,
)
from balancer.config_walk import (
    SEVERAL_WORKERS_STICKY,
    ConfigError,
    Problem,
    check_workers,
    parse_config,
)
from balancer.durations import format_duration, format_size, parse_duration, parse_size
from balancer.inactive import inactive

__all__ = [
    "ALERT_RULES",
    "HASH_SOURCES",
    "KB",
    "LOG_LEVELS",
    "MB",
    "SEVERAL_WORKERS_STICKY",
    "SEVERITIES",
    "STICKY_MODES",
    "STRATEGY_NAMES",
    "AccessLogConfig",
    "AdaptiveConfig",
    "AdaptiveWeights",
    "Address",
    "AdminConfig",
    "AlertRuleConfig",
    "AlertsConfig",
    "BackendConfig",
    "CacheConfig",
    "CircuitBreakerConfig",
    "CompressionConfig",
    "Config",
    "ConfigError",
    "CooldownConfig",
    "HashConfig",
    "HealthCheckConfig",
    "LimitsConfig",
    "Problem",
    "QueueConfig",
    "RedisConfig",
    "RetryBudgetConfig",
    "StickyConfig",
    "TimeoutsConfig",
    "check_workers",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "summary",
]


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
    lines.append(_alerts_line(config))
    lines.extend(entry.notice for entry in pending)
    return "\n".join(lines)


def _alerts_line(config: Config) -> str:
    alerts = config.alerts
    if not alerts.enabled:
        return "alerts off"
    rules = ", ".join(rule.name for rule in alerts.rules) or "no rules"
    webhook = f", webhook {shown_url(alerts.webhook)}" if alerts.webhook else ""
    return f"alerts every {format_duration(alerts.interval)}: {rules}{webhook}"
