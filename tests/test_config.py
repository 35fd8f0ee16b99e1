"""balancer.config: the YAML contract of SPEC §2, every problem at once with path and line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from balancer.config import (
    LOG_LEVELS,
    STICKY_MODES,
    STRATEGY_NAMES,
    AdaptiveConfig,
    AdaptiveWeights,
    Address,
    AdminConfig,
    BackendConfig,
    CacheConfig,
    CircuitBreakerConfig,
    CompressionConfig,
    Config,
    ConfigError,
    HashConfig,
    HealthCheckConfig,
    LimitsConfig,
    Problem,
    RedisConfig,
    RetryBudgetConfig,
    StickyConfig,
    TimeoutsConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    summary,
)
from balancer.durations import format_duration, format_size

# SPEC §2's example, verbatim but for the comments.
SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080
workers: 1
log_level: info
shutdown_timeout: 30s
admin:
  listen: 127.0.0.1:9090
  token: ${BALANCER_ADMIN_TOKEN:-}
strategy: round_robin
hash:
  on: ip
  name: X-User-Id
adaptive:
  weights: {connections: 0.4, response_time: 0.3, cpu: 0.2, memory: 0.1}
backends:
  - url: http://127.0.0.1:9001
    name: app1
    weight: 1
health_check:
  path: /health
  interval: 5s
  timeout: 2s
  rise: 2
  fall: 3
circuit_breaker:
  failure_threshold: 5
  reset_timeout: 60s
sticky:
  mode: off
  cookie: lb_session
  header: X-Session-Id
  ttl: 30m
  secret: ""
redis:
  url: redis://127.0.0.1:6379/0
  timeout: 50ms
timeouts:
  connect: 2s
  read: 30s
  client_header: 10s
  client_idle: 60s
limits:
  max_request_line: 8KB
  max_header_line: 8KB
  max_head: 64KB
  max_headers: 100
  max_body: 0
  max_connections: 10000
retries: 1
retry_budget:
  percent: 20
  min_concurrency: 3
slow_start: 0s
cache:
  enabled: false
  paths: [/]
  max_memory: 64MB
  max_object_size: 8MB
  default_ttl: 0s
  shared: true
compression:
  enabled: false
  min_size: 1KB
  types: [text/*, application/json, application/javascript, application/xml, image/svg+xml]
"""

ONE_BACKEND = "backends:\n  - url: http://127.0.0.1:9001\n"


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, "balancer.yaml", env={} if env is None else env)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env)
    return caught.value.lines()


def only_problem(text: str, env: dict[str, str] | None = None) -> str:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


def with_section(section: str) -> str:
    return ONE_BACKEND + section


# --- the whole file and its defaults --------------------------------------------------------


def test_spec_example_parses_to_its_values() -> None:
    config = parse(SPEC_EXAMPLE)
    assert config == Config(
        backends=(BackendConfig("http://127.0.0.1:9001", "app1", 1, "http", "127.0.0.1", 9001),),
        hash=HashConfig("ip", "X-User-Id"),
        redis=RedisConfig("redis://127.0.0.1:6379/0"),
        sticky=StickyConfig(cookie_explicit=True),
        source="balancer.yaml",
    )
    assert config.admin.token == ""


def test_spec_example_takes_the_admin_token_from_the_environment() -> None:
    config = parse(SPEC_EXAMPLE, {"BALANCER_ADMIN_TOKEN": "s3cret"})
    assert config.admin.token == "s3cret"


def test_every_default() -> None:
    config = parse(ONE_BACKEND)
    assert config.listen == Address("0.0.0.0", 8080)
    assert (config.workers, config.log_level, config.shutdown_timeout) == (1, "INFO", 30.0)
    assert config.admin == AdminConfig(Address("127.0.0.1", 9090), "")
    assert config.strategy == "round_robin"
    assert config.hash == HashConfig("ip", None)
    assert config.adaptive == AdaptiveConfig(AdaptiveWeights(0.4, 0.3, 0.2, 0.1), 32)
    assert config.health_check == HealthCheckConfig("/health", 5.0, 2.0, 2, 3)
    assert config.circuit_breaker == CircuitBreakerConfig(5, 60.0)
    assert config.sticky == StickyConfig("off", "lb_session", "X-Session-Id", 1800.0, False)
    assert config.redis == RedisConfig(None, 0.05)
    assert config.sticky.secret == ""
    assert config.timeouts == TimeoutsConfig(2.0, 30.0, 10.0, 60.0)
    assert config.limits == LimitsConfig(8192, 8192, 65536, 100, 0, 10000)
    assert (config.retries, config.slow_start) == (1, 0.0)
    assert config.retry_budget == RetryBudgetConfig(20.0, 3)
    assert config.cache == CacheConfig(False, ("/",), 64 << 20, 8 << 20, 0.0, True)
    assert config.compression == CompressionConfig(
        False,
        1024,
        (
            "text/*",
            "application/json",
            "application/javascript",
            "application/xml",
            "image/svg+xml",
        ),
    )
    assert config.backends == (
        BackendConfig("http://127.0.0.1:9001", "127.0.0.1:9001", 1, "http", "127.0.0.1", 9001),
    )
    assert config.source == "balancer.yaml"


def test_sections_build_with_their_defaults_and_are_frozen() -> None:
    assert TimeoutsConfig() == TimeoutsConfig(2.0, 30.0, 10.0, 60.0)
    config = Config(backends=(BackendConfig("http://a", "a"),))
    assert config.source == "<string>" and config.sticky.mode == "off"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retries = 3  # type: ignore[misc]


def test_public_names() -> None:
    assert STRATEGY_NAMES == (
        "round_robin",
        "weighted",
        "least_connections",
        "response_time",
        "adaptive",
        "p2c",
        "consistent_hash",
    )
    assert STICKY_MODES == ("off", "cookie", "learn", "header", "ip")
    assert LOG_LEVELS == ("DEBUG", "INFO", "WARNING", "ERROR")


@pytest.mark.parametrize(
    "section",
    ["admin:", "admin: ~", "hash:", "adaptive:", "adaptive:\n  weights:", "health_check:",
     "circuit_breaker:", "sticky:", "redis:", "redis:\n  url:", "redis:\n  url: ''",
     "timeouts:", "limits:", "retry_budget:", "cache:", "compression:"],
)  # fmt: skip
def test_absent_or_null_sections_take_their_defaults(section: str) -> None:
    assert parse(with_section(section + "\n")) == parse(ONE_BACKEND)


# --- durations and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("250ms", 0.25), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("30m", 1800.0),
     ("1m30s", 90.0), ("1.5s", 1.5), ("0s", 0.0), ("5", 5.0), ("0.5", 0.5), (" 2s ", 2.0),
     (5, 5.0), (0.25, 0.25), (0, 0.0)],
)  # fmt: skip
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["30x", "", "s", "2 s", "1d", "2S", "inf", "nan", "1e3", "2s3", True, None, [1]]
)
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(
        ValueError, match=r"invalid duration .* \(use 250ms, 2s, 1m, 1h or seconds\)"
    ):
        parse_duration(value)


@pytest.mark.parametrize("value", ["-1s", -1, -0.5, "-250ms"])
def test_parse_duration_refuses_negative(value: str | int | float) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "size"),
    [("512", 512), (512, 512), ("64KB", 65536), ("8MB", 8 << 20), ("1GB", 1 << 30),
     ("1kb", 1024), ("2K", 2048), ("3M", 3 << 20), ("1G", 1 << 30), ("4KiB", 4096),
     ("1 MiB", 1 << 20), ("1gib", 1 << 30), ("100B", 100), ("100 b", 100), ("0", 0)],
)  # fmt: skip
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["8XB", "", "KB", "1.5MB", "1TB", "1 K B", True, 1.5, None])
def test_parse_size_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=r"invalid size .* \(use 512, 64KB, 8MB or 1GB\)"):
        parse_size(value)


@pytest.mark.parametrize("value", [-1, "-1KB"])
def test_parse_size_refuses_negative(value: str | int) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.25, "250ms"), (2.0, "2s"), (60.0, "1m"), (1800.0, "30m"),
                          (3600.0, "1h"), (90.0, "90s"), (0.0, "0s"), (0.0005, "0.0005s")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("size", "text"), [(1 << 30, "1GB"), (64 << 20, "64MB"), (1536, "1536")])
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("section", "attribute", "value"),
    [("timeouts:\n  read: 250ms\n", ("timeouts", "read"), 0.25),
     ("timeouts:\n  connect: 3\n", ("timeouts", "connect"), 3.0),
     ("timeouts:\n  client_idle: 1.5\n", ("timeouts", "client_idle"), 1.5),
     ("health_check:\n  interval: 500ms\n", ("health_check", "interval"), 0.5),
     ("sticky:\n  ttl: 1h\n", ("sticky", "ttl"), 3600.0),
     ("redis:\n  timeout: 250ms\n", ("redis", "timeout"), 0.25),
     ("redis:\n  timeout: 1\n", ("redis", "timeout"), 1.0),
     ("limits:\n  max_body: 1GB\n", ("limits", "max_body"), 1 << 30),
     ("limits:\n  max_head: 16 KiB\n", ("limits", "max_head"), 16384),
     ("limits:\n  max_request_line: 4096\n", ("limits", "max_request_line"), 4096),
     ("cache:\n  max_memory: 1g\n", ("cache", "max_memory"), 1 << 30),
     ("compression:\n  min_size: 0\n", ("compression", "min_size"), 0),
     ("shutdown_timeout: 0\n", ("shutdown_timeout",), 0.0),
     ("slow_start: 1m\n", ("slow_start",), 60.0)],
)  # fmt: skip
def test_durations_and_sizes_in_the_file(
    section: str, attribute: tuple[str, ...], value: float
) -> None:
    found: Any = parse(with_section(section))
    for name in attribute:
        found = getattr(found, name)
    assert found == value


# --- environment expansion -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "env", "pick", "expected"),
    [
        ("workers: ${W:-2}\n", {}, lambda c: c.workers, 2),
        ("workers: ${W:-2}\n", {"W": "4"}, lambda c: c.workers, 4),
        ("workers: ${W:-2}\n", {"W": ""}, lambda c: c.workers, 2),
        ("cache:\n  enabled: ${C:-true}\n", {}, lambda c: c.cache.enabled, True),
        ("admin:\n  token: ${T}\n", {"T": "abc"}, lambda c: c.admin.token, "abc"),
        ("admin:\n  token: ${T}\n", {"T": ""}, lambda c: c.admin.token, ""),
        ("admin:\n  token: ${T}\n", {"T": "123456"}, lambda c: c.admin.token, "123456"),
        ("admin:\n  token: '${T}'\n", {"T": "yes"}, lambda c: c.admin.token, "yes"),
        ("admin:\n  token: ${A}-${B:-x}\n", {"A": "a"}, lambda c: c.admin.token, "a-x"),
        (
            "redis:\n  url: redis://${HOST:-127.0.0.1}:6379/0\n",
            {},
            lambda c: c.redis.url,
            "redis://127.0.0.1:6379/0",
        ),
        (
            "redis:\n  url: redis://${HOST:-127.0.0.1}:${PORT}/0\n",
            {"HOST": "cache", "PORT": "6380"},
            lambda c: c.redis.url,
            "redis://cache:6380/0",
        ),
        ("redis:\n  url: ${REDIS_URL:-}\n", {}, lambda c: c.redis.url, None),
        ("listen: ${LISTEN:-:8081}\n", {}, lambda c: c.listen, Address("0.0.0.0", 8081)),
        ("timeouts:\n  read: ${READ:-45s}\n", {}, lambda c: c.timeouts.read, 45.0),
    ],
)
def test_environment_expansion(
    yaml_text: str, env: dict[str, str], pick: Any, expected: object
) -> None:
    assert pick(parse(with_section(yaml_text), env)) == expected


def test_quoted_expansion_stays_text() -> None:
    text = with_section("workers: '${W:-2}'\n")
    assert (
        only_problem(text) == "balancer.yaml:3: workers: expected a number >= 1 or 'auto', "
        "got the string '2' (remove the quotes)"
    )


def test_unset_variable_is_a_problem_at_its_key_and_line() -> None:
    text = with_section("admin:\n  listen: 127.0.0.1:9090\n  token: ${ADMIN_TOKEN}\n")
    assert only_problem(text) == (
        "balancer.yaml:5: admin.token: environment variable ADMIN_TOKEN is not set"
    )


def test_malformed_reference_is_a_problem() -> None:
    assert "malformed ${...}" in only_problem(with_section("admin:\n  token: ${NOPE\n"))
    assert "malformed ${...}" in only_problem(with_section("admin:\n  token: ${A:-${B}}\n"))


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALANCER_TEST_WORKERS", "3")
    assert parse_config(with_section("workers: ${BALANCER_TEST_WORKERS}\n")).workers == 3


# --- unknown keys, several problems, order ---------------------------------------------------


def test_cli_example_reports_three_problems_in_file_order() -> None:
    text = (
        "listen: 127.0.0.1:0\nstrategy: round_robbin\nbackends:\n"
        "  - url: http://127.0.0.1:9001\n    wieght: 2\n  - url: ftp://x\n"
    )
    assert problems(text) == [
        "balancer.yaml:2: strategy: unknown strategy 'round_robbin' (valid: round_robin, "
        "weighted, least_connections, response_time, adaptive, p2c, consistent_hash); "
        "did you mean 'round_robin'?",
        "balancer.yaml:5: backends[0]: unknown key 'wieght'; did you mean 'weight'?",
        "balancer.yaml:6: backends[1].url: must be http://host:port or https://host:port, "
        "got 'ftp://x'",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            ONE_BACKEND + "timeouts:\n  connect: 1s\n  raed: 2s\n",
            "balancer.yaml:5: timeouts: unknown key 'raed'; did you mean 'read'?",
        ),
        (
            ONE_BACKEND + "stratgy: p2c\n",
            "balancer.yaml:3: unknown key 'stratgy'; did you mean 'strategy'?",
        ),
        (
            ONE_BACKEND + "sticky:\n  zzz: 1\n",
            "balancer.yaml:4: sticky: unknown key 'zzz' (valid: mode, cookie, header, ttl, secret)",
        ),
        (
            ONE_BACKEND + "adaptive:\n  weights:\n    cpus: 1\n",
            "balancer.yaml:5: adaptive.weights: unknown key 'cpus'; did you mean 'cpu'?",
        ),
    ],
)
def test_unknown_keys_with_suggestion_and_line(text: str, expected: str) -> None:
    assert only_problem(text) == expected


def test_sticky_cookie_explicit_is_not_a_key() -> None:
    assert "unknown key 'cookie_explicit'" in only_problem(
        with_section("sticky:\n  cookie_explicit: true\n")
    )


def test_every_problem_at_once_sorted_by_line_unknown_lines_last() -> None:
    text = (
        "workers: 0\n"  # 1
        "timeouts:\n"
        "  read: 30x\n"  # 3
        "  connect: 0s\n"  # 4
        "limits:\n"
        "  max_head: 8XB\n"  # 6
        "retries: -1\n"  # 7
        "log_level: loud\n"  # 8
    )
    assert problems(text) == [
        "balancer.yaml:1: workers: expected a number >= 1 or 'auto', got 0",
        "balancer.yaml:3: timeouts.read: invalid duration '30x' (use 250ms, 2s, 1m, 1h or seconds)",
        "balancer.yaml:4: timeouts.connect: must be greater than 0, got '0s'",
        "balancer.yaml:6: limits.max_head: invalid size '8XB' (use 512, 64KB, 8MB or 1GB)",
        "balancer.yaml:7: retries: must be at least 0, got -1",
        "balancer.yaml:8: log_level: unknown log level 'loud' (valid: debug, info, warning, error)",
        "balancer.yaml: backends: at least one backend is required",
    ]


def test_duplicate_keys() -> None:
    text = "retries: 1\n" + ONE_BACKEND + "retries: 2\n"
    assert only_problem(text) == "balancer.yaml:4: duplicate key 'retries' (first at line 1)"
    nested = with_section("timeouts:\n  read: 1s\n  read: 2s\n")
    assert (
        only_problem(nested) == "balancer.yaml:5: timeouts: duplicate key 'read' (first at line 4)"
    )


# --- YAML 1.1 booleans: `on:` and `mode: off` ------------------------------------------------


@pytest.mark.parametrize("key", ["on", "'on'", '"on"'])
def test_hash_on_key_in_both_forms(key: str) -> None:
    config = parse(with_section(f"hash:\n  {key}: header\n  name: X-User-Id\n"))
    assert config.hash == HashConfig("header", "X-User-Id")


@pytest.mark.parametrize("mode", ["off", "'off'", '"off"'])
def test_sticky_mode_off_in_both_forms(mode: str) -> None:
    assert parse(with_section(f"sticky:\n  mode: {mode}\n")).sticky.mode == "off"


def test_sticky_mode_names_are_exact() -> None:
    # YAML 1.1 reads a bare Off as false too; mode names are lower case, as SPEC §2 lists them.
    assert only_problem(with_section("sticky:\n  mode: Off\n")) == (
        "balancer.yaml:4: sticky.mode: unknown sticky mode 'Off' "
        "(valid: off, cookie, learn, header, ip); did you mean 'off'?"
    )


@pytest.mark.parametrize("mode", ["cookie", "header", "ip"])
def test_sticky_modes(mode: str) -> None:
    assert parse(with_section(f"sticky:\n  mode: {mode}\n")).sticky.mode == mode


def test_learn_mode_needs_an_explicit_cookie() -> None:
    text = with_section("sticky:\n  mode: learn\n")
    assert only_problem(text) == (
        "balancer.yaml:4: sticky.cookie: learn mode needs the app's session cookie name"
    )
    config = parse(with_section("sticky:\n  mode: learn\n  cookie: JSESSIONID\n"))
    assert config.sticky == StickyConfig("learn", "JSESSIONID", cookie_explicit=True)
    default_named = parse(with_section("sticky:\n  mode: learn\n  cookie: lb_session\n"))
    assert default_named.sticky.cookie_explicit


@pytest.mark.parametrize("on", ["header", "cookie"])
def test_hash_header_or_cookie_needs_a_name(on: str) -> None:
    text = with_section(f"hash:\n  on: {on}\n")
    assert only_problem(text) == (
        f"balancer.yaml:4: hash.name: required when on is {on}: the {on} to hash"
    )


def test_hash_on_unknown_source() -> None:
    assert "unknown hash source 'body' (valid: ip, header, cookie)" in only_problem(
        with_section("hash:\n  on: body\n")
    )


# --- adaptive weights ------------------------------------------------------------------------


def test_adaptive_weights_partial_take_defaults() -> None:
    config = parse(with_section("adaptive:\n  weights: {cpu: 1, memory: 0}\n"))
    assert config.adaptive.weights == AdaptiveWeights(0.4, 0.3, 1.0, 0.0)
    assert config.adaptive.capacity == 32


def test_adaptive_capacity_as_written() -> None:
    text = "adaptive:\n  weights: {connections: 0.4, response_time: 0.3, cpu: 0.2, memory: 0.1}\n"
    config = parse(with_section(text + "  capacity: 8\n"))
    assert config.adaptive == AdaptiveConfig(AdaptiveWeights(0.4, 0.3, 0.2, 0.1), 8)
    assert parse(with_section("adaptive: {capacity: 1}\n")).adaptive.capacity == 1
    assert parse(with_section("adaptive: {capacity: 100000}\n")).adaptive.weights == (
        AdaptiveWeights()
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "balancer.yaml:4: adaptive.capacity: must be at least 1, got 0"),
        ("-64", "balancer.yaml:4: adaptive.capacity: must be at least 1, got -64"),
        ("1.5", "balancer.yaml:4: adaptive.capacity: expected a whole number, got 1.5"),
        ("64.0", "balancer.yaml:4: adaptive.capacity: expected a whole number, got 64.0"),
        (".inf", "balancer.yaml:4: adaptive.capacity: expected a whole number, got inf"),
        (".nan", "balancer.yaml:4: adaptive.capacity: expected a whole number, got nan"),
        ("yes", "balancer.yaml:4: adaptive.capacity: expected a whole number, got a boolean"),
        ("'64'", "balancer.yaml:4: adaptive.capacity: expected a whole number, got the string"),
        ("[64]", "balancer.yaml:4: adaptive.capacity: expected a whole number, got a list"),
        ("{max: 64}", "balancer.yaml:4: adaptive.capacity: expected a whole number, got a mapping"),
        ("~", "balancer.yaml:4: adaptive.capacity: expected a whole number"),
    ],
)
def test_adaptive_capacity_refused(value: str, message: str) -> None:
    assert message in only_problem(with_section(f"adaptive:\n  capacity: {value}\n"))


def test_adaptive_unknown_key_and_every_problem_at_once() -> None:
    text = with_section("adaptive:\n  capacty: 64\n  weights: {cpu: -1}\n")
    with pytest.raises(ConfigError) as caught:
        parse(text)
    lines = caught.value.lines()
    assert any("adaptive: unknown key 'capacty'; did you mean 'capacity'?" in x for x in lines)
    assert any("adaptive.weights.cpu: must be >= 0, got -1" in x for x in lines), lines


def test_adaptive_weights_all_zero() -> None:
    text = with_section(
        "adaptive:\n  weights: {connections: 0, response_time: 0, cpu: 0, memory: 0}\n"
    )
    assert only_problem(text) == (
        "balancer.yaml:4: adaptive.weights: at least one weight must be greater than 0"
    )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("{cpu: -0.1}", "adaptive.weights.cpu: must be >= 0, got -0.1"),
        ("{memory: yes}", "adaptive.weights.memory: expected a number, got a boolean"),
        ("{connections: .nan}", "adaptive.weights.connections: must be >= 0, got nan"),
        ("[1, 2]", "adaptive.weights: expected a mapping of connections, response_time"),
    ],
)
def test_adaptive_weights_refused(weights: str, message: str) -> None:
    assert message in only_problem(with_section(f"adaptive:\n  weights: {weights}\n"))


# --- backends --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "http://127.0.0.1:9001",
            ("http://127.0.0.1:9001", "127.0.0.1:9001", "http", "127.0.0.1", 9001),
        ),
        (
            "http://127.0.0.1:9001/",
            ("http://127.0.0.1:9001", "127.0.0.1:9001", "http", "127.0.0.1", 9001),
        ),
        (
            "https://app.internal",
            ("https://app.internal", "app.internal:443", "https", "app.internal", 443),
        ),
        ("http://app", ("http://app", "app:80", "http", "app", 80)),
        ("HTTP://app:8000", ("http://app:8000", "app:8000", "http", "app", 8000)),
        ("'http://[::1]:9001'", ("http://[::1]:9001", "[::1]:9001", "http", "::1", 9001)),
    ],
)
def test_backend_urls(url: str, expected: tuple[str, str, str, str, int]) -> None:
    (backend,) = parse(f"backends:\n  - url: {url}\n").backends
    assert (backend.url, backend.name, backend.scheme, backend.host, backend.port) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "must be http://host:port or https://host:port, got 'ftp://x'"),
        ("127.0.0.1:9001", "must be http://host:port or https://host:port, got '127.0.0.1:9001'"),
        ("http://", "must be http://host:port or https://host:port, got 'http://'"),
        (
            "http://a:9001/api",
            "a path is not allowed ('/api'): a backend url is scheme://host:port",
        ),
        ("http://a:9001/?x=1", "a query or fragment is not allowed ('http://a:9001/?x=1')"),
        ("http://a:9001?", "a query or fragment is not allowed"),
        ("http://a:9001#top", "a query or fragment is not allowed"),
        ("http://u:p@a:9001", "credentials are not allowed in a backend url"),
        ("http://a:99999", "port must be 1..65535, got 'http://a:99999'"),
        ("http://a:x", "port must be 1..65535"),
        ("", "must be http://host:port or https://host:port, got ''"),
    ],
)
def test_backend_url_refused(url: str, message: str) -> None:
    found = only_problem(f"backends:\n  - url: '{url}'\n")
    assert found.startswith("balancer.yaml:2: backends[0].url: ") and message in found


def test_backend_path_message_exactly() -> None:
    assert only_problem("backends:\n  - url: http://a:9001/api\n") == (
        "balancer.yaml:2: backends[0].url: a path is not allowed ('/api'): "
        "a backend url is scheme://host:port"
    )


def test_backend_names_and_weights() -> None:
    text = (
        "backends:\n"
        "  - url: http://127.0.0.1:9001\n    name: app1\n    weight: 3\n"
        "  - url: http://127.0.0.1:9002\n    weight: 0\n"
    )
    first, second = parse(text).backends
    assert (first.name, first.weight) == ("app1", 3)
    assert (second.name, second.weight) == ("127.0.0.1:9002", 0)


def test_duplicate_backend_names() -> None:
    text = (
        "backends:\n"
        "  - url: http://127.0.0.1:9001\n    name: app1\n"
        "  - url: http://127.0.0.1:9002\n    name: app1\n"
        "  - url: http://127.0.0.1:9001\n"
        "  - url: http://127.0.0.1:9001/\n"
    )
    assert problems(text) == [
        "balancer.yaml:5: backends[1].name: duplicate name 'app1' (also backends[0])",
        "balancer.yaml:7: backends[3].name: duplicate name '127.0.0.1:9001' (also backends[2])",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backends: []\n", "balancer.yaml:1: backends: at least one backend is required"),
        ("listen: :8080\n", "balancer.yaml: backends: at least one backend is required"),
        ("backends:\n", "balancer.yaml:1: backends: expected a list of backends (- url: http://host:port), got nothing (null)"),
        ("backends: http://a\n", "balancer.yaml:1: backends: expected a list of backends (- url: http://host:port), got 'http://a'"),
        ("backends:\n  - http://a\n", "balancer.yaml:2: backends[0]: expected a mapping of url, name, weight, backup, max_connections; got 'http://a'"),
        ("backends:\n  - name: a\n", "balancer.yaml:2: backends[0]: missing key 'url' (http://host:port)"),
        ("backends:\n  - {url: http://a, weight: -1}\n", "balancer.yaml:2: backends[0].weight: must be at least 0, got -1"),
        ("backends:\n  - {url: http://a, weight: yes}\n", "balancer.yaml:2: backends[0].weight: expected a whole number, got a boolean (true; YAML reads yes/no/on/off as booleans)"),
        ("backends:\n  - {url: http://a, weight: 1.5}\n", "balancer.yaml:2: backends[0].weight: expected a whole number, got 1.5"),
        ("backends:\n  - {url: http://a, name: 'a b'}\n", "balancer.yaml:2: backends[0].name: must be a non-empty name without spaces or '/', got 'a b'"),
    ],
)  # fmt: skip
def test_backends_refused(text: str, expected: str) -> None:
    assert only_problem(text) == expected


def test_backend_name_as_written() -> None:
    (backend,) = parse("backends:\n  - {url: http://a, name: 42}\n").backends
    assert backend.name == "42"


# --- other values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("0.0.0.0:8080", Address("0.0.0.0", 8080)),
        ("127.0.0.1:0", Address("127.0.0.1", 0)),
        ("'[::1]:8080'", Address("::1", 8080)),
        ("':8080'", Address("0.0.0.0", 8080)),
        ("localhost:9090", Address("localhost", 9090)),
        ("0.0.0.0:65535", Address("0.0.0.0", 65535)),
    ],
)
def test_listen_addresses(listen: str, address: Address) -> None:
    config = parse(with_section(f"listen: {listen}\nadmin:\n  listen: {listen}\n"))
    assert config.listen == config.admin.listen == address


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8080", "expected host:port such as 0.0.0.0:8080 or [::1]:8080, got '8080'"),
        ("0.0.0.0:70000", "port must be 0..65535, got '0.0.0.0:70000'"),
        ("0.0.0.0:http", "port must be 0..65535"),
        ("'::1:8080'", "an IPv6 address goes in brackets"),
        ("'a b:80'", "expected host:port"),
    ],
)
def test_listen_refused(listen: str, message: str) -> None:
    assert message in only_problem(with_section(f"listen: {listen}\n"))


def test_address_str() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("0.0.0.0", 8080)) == "0.0.0.0:8080"


def test_workers_auto() -> None:
    assert parse(with_section("workers: auto\n")).workers == (os.cpu_count() or 1)
    assert parse(with_section("workers: 4\n")).workers == 4


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error"])
def test_log_level_any_case(level: str) -> None:
    assert parse(with_section(f"log_level: {level}\n")).log_level == level.upper()


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_strategy_name(strategy: str) -> None:
    assert parse(with_section(f"strategy: {strategy}\n")).strategy == strategy


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("workers: yes\n", "workers: expected a number >= 1 or 'auto', got a boolean"),
        ("retries: true\n", "retries: expected a whole number, got a boolean"),
        ("retries: '2'\n", "retries: expected a whole number, got the string '2' (remove the quotes)"),
        ("health_check:\n  rise: no\n", "health_check.rise: expected a whole number, got a boolean"),
        ("limits:\n  max_headers: on\n", "limits.max_headers: expected a whole number, got a boolean"),
        ("limits:\n  max_body: yes\n", "limits.max_body: expected a size (512, 64KB, 8MB, 1GB), got a boolean"),
        ("timeouts:\n  read: true\n", "timeouts.read: expected a duration (250ms, 2s, 1m, 1h), got a boolean"),
        ("retry_budget:\n  percent: yes\n", "retry_budget.percent: expected a number, got a boolean"),
        ("cache:\n  enabled: 1\n", "cache.enabled: expected true or false, got 1"),
        ("compression:\n  enabled: 'true'\n", "compression.enabled: expected true or false, got the string 'true' (remove the quotes)"),
    ],
)  # fmt: skip
def test_wrong_types(section: str, message: str) -> None:
    assert message in only_problem(with_section(section))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("health_check:\n  path: health\n", "health_check.path: must start with '/', got 'health'"),
        ("health_check:\n  interval: 0\n", "health_check.interval: must be greater than 0, got 0"),
        ("health_check:\n  timeout: -1s\n", "health_check.timeout: invalid duration '-1s': must not be negative"),
        ("health_check:\n  fall: 0\n", "health_check.fall: must be at least 1, got 0"),
        ("circuit_breaker:\n  failure_threshold: 0\n", "circuit_breaker.failure_threshold: must be at least 1, got 0"),
        ("circuit_breaker:\n  reset_timeout: 0s\n", "circuit_breaker.reset_timeout: must be greater than 0, got '0s'"),
        ("sticky:\n  ttl: 0\n", "sticky.ttl: must be greater than 0, got 0"),
        ("sticky:\n  mode: coookie\n", "sticky.mode: unknown sticky mode 'coookie' (valid: off, cookie, learn, header, ip); did you mean 'cookie'?"),
        ("sticky:\n  cookie: 'my cookie'\n", "sticky.cookie: expected a header or cookie name"),
        ("sticky:\n  header: ''\n", "sticky.header: expected a header or cookie name"),
        ("redis:\n  timeout: 0\n", "redis.timeout: must be greater than 0, got 0"),
        ("redis:\n  timeout: -50ms\n", "redis.timeout: invalid duration '-50ms': must not be negative"),
        ("redis:\n  timeout: fast\n", "redis.timeout: invalid duration 'fast'"),
        ("sticky:\n  secret: [a, b]\n", "sticky.secret: expected text, got a list"),
        ("redis:\n  url: http://r:6379\n", "redis.url: must start with redis://, rediss:// or unix://, got 'http://r:6379'"),
        ("limits:\n  max_head: 0\n", "limits.max_head: must be at least 1 bytes, got 0"),
        ("limits:\n  max_connections: 0\n", "limits.max_connections: must be at least 1, got 0"),
        ("retry_budget:\n  percent: 101\n", "retry_budget.percent: must be between 0 and 100, got 101"),
        ("retry_budget:\n  min_concurrency: -1\n", "retry_budget.min_concurrency: must be at least 0, got -1"),
        ("cache:\n  paths: [/a, b]\n", "cache.paths: must start with '/', got 'b'"),
        ("cache:\n  paths: /a\n", "cache.paths: expected a list such as [a, b], got '/a'"),
        ("cache:\n  max_object_size: 0\n", "cache.max_object_size: must be at least 1 bytes, got 0"),
        ("compression:\n  types: [html]\n", "compression.types: expected a media type such as text/html or text/*, got 'html'"),
        ("shutdown_timeout: -5\n", "shutdown_timeout: invalid duration -5: must not be negative"),
        ("strategy: Round_Robin\n", "did you mean 'round_robin'?"),
        ("strategy: fastest\n", "strategy: unknown strategy 'fastest' (valid: round_robin, weighted, least_connections, response_time, adaptive, p2c, consistent_hash)"),
        ("timeouts: 30s\n", "timeouts: expected a mapping of connect, read, client_header, client_idle, client_body, client_send, upstream_idle, tunnel_idle; got '30s'"),
        ("shutdown_timeout: !custom 3\n", "shutdown_timeout: cannot read this value"),
    ],
)  # fmt: skip
def test_values_refused(section: str, message: str) -> None:
    assert message in only_problem(with_section(section))


def test_sticky_secret_is_text_from_the_environment_and_never_in_a_repr() -> None:
    text = with_section("sticky:\n  mode: cookie\n  secret: ${LB_SECRET}\n")
    config = parse(text, {"LB_SECRET": "0123456789"})
    assert config.sticky.secret == "0123456789"
    assert "0123456789" not in repr(config) and "0123456789" not in summary(config)
    assert parse(with_section("sticky:\n  secret: 12345\n")).sticky.secret == "12345"  # as written
    assert parse(with_section("sticky:\n  secret:\n")).sticky.secret == ""
    assert "LB_SECRET is not set" in only_problem(text)


def test_other_values_accepted() -> None:
    text = with_section(
        "redis:\n  url: rediss://r:6380/1\n"
        "cache:\n  enabled: yes\n  paths: [/static, /img]\n  default_ttl: 10s\n  shared: false\n"
        "compression:\n  enabled: true\n  types: [text/html]\n"
        "retry_budget:\n  percent: 12.5\n  min_concurrency: 0\n"
    )
    config = parse(text)
    assert config.redis.url == "rediss://r:6380/1"
    assert config.cache == CacheConfig(True, ("/static", "/img"), 64 << 20, 8 << 20, 10.0, False)
    assert config.compression.types == ("text/html",) and config.compression.enabled
    assert config.retry_budget == RetryBudgetConfig(12.5, 0)


# --- the document itself ---------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "~\n"])
def test_empty_file(text: str) -> None:
    assert only_problem(text) == (
        "balancer.yaml: the file is empty: expected settings such as backends:"
    )


@pytest.mark.parametrize(
    ("text", "got"), [("- a\n- b\n", "a list"), ("just words\n", "'just words'")]
)
def test_top_level_not_a_mapping(text: str, got: str) -> None:
    assert only_problem(text) == (
        f"balancer.yaml:1: expected a mapping of settings (key: value lines), got {got}"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [("backends: [\n", 2), (ONE_BACKEND + "retries: 1\n  bad: indent\n", 4),
     ("a: b\n\tc: d\n", 2), ("a: 1\n---\nb: 2\n", 2)],
)  # fmt: skip
def test_yaml_syntax_error_has_a_line(text: str, line: int) -> None:
    found = only_problem(text)
    assert found.startswith(f"balancer.yaml:{line}: invalid YAML: "), found


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text(SPEC_EXAMPLE)
    config = load_config(path, env={})
    assert config.source == str(path)
    assert config.backends[0].name == "app1"


def test_load_config_reports_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(ONE_BACKEND + "retries: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env={})
    assert caught.value.source == str(path)
    assert str(caught.value) == f"{path}:3: retries: must be at least 0, got -1"


def test_load_config_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == (
        Problem("", "cannot read the file: No such file or directory", None),
    )
    assert caught.value.lines() == [f"{path}: cannot read the file: No such file or directory"]


# --- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "rendered"),
    [
        (Problem("backends[1].url", "must be http://host:port", 12), "balancer.yaml:12: backends[1].url: must be http://host:port"),
        (Problem("backends", "at least one backend is required", None), "balancer.yaml: backends: at least one backend is required"),
        (Problem("", "invalid YAML: oops", 3), "balancer.yaml:3: invalid YAML: oops"),
        (Problem("", "the file is empty", None), "balancer.yaml: the file is empty"),
    ],
)  # fmt: skip
def test_problem_render(problem: Problem, rendered: str) -> None:
    assert problem.render("balancer.yaml") == rendered


def test_config_error_orders_by_line_unknown_last() -> None:
    error = ConfigError(
        (Problem("c", "third", None), Problem("b", "second", 9), Problem("a", "first", 2)), "f"
    )
    assert error.lines() == ["f:2: a: first", "f:9: b: second", "f: c: third"]
    assert str(error) == "f:2: a: first\nf:9: b: second\nf: c: third"


def test_summary_mentions_each_backend() -> None:
    text = (
        "listen: 127.0.0.1:8080\nworkers: 2\nstrategy: least_connections\n"
        "sticky:\n  mode: cookie\nredis:\n  url: redis://:pw@r:6379/0\n"
        "backends:\n  - {url: http://10.0.0.1:80, name: web1, weight: 2}\n"
        "  - url: https://10.0.0.2\n"
    )
    text_summary = summary(parse(text))
    for expected in (
        "127.0.0.1:8080",
        "workers 2",
        "least_connections",
        "cookie",
        "redis",
        "web1  http://10.0.0.1:80  weight 2",
        "10.0.0.2:443  https://10.0.0.2  weight 1",
        "retries 1",
        "read 30s",
    ):
        assert expected in text_summary
    assert "pw" not in text_summary
    assert len(text_summary.splitlines()) < 25


@pytest.mark.parametrize(
    ("section", "pick", "expected"),
    [
        ("admin:\n  token: 123456\n", lambda c: c.admin.token, "123456"),
        ("admin:\n  token: yes\n", lambda c: c.admin.token, "yes"),
        ("admin:\n  token:\n", lambda c: c.admin.token, ""),
        ("hash:\n  on: cookie\n  name: on\n", lambda c: c.hash.name, "on"),
        ("health_check:\n  path: /ok\n", lambda c: c.health_check.path, "/ok"),
    ],
)
def test_text_fields_take_the_text_as_written(section: str, pick: Any, expected: str) -> None:
    assert pick(parse(with_section(section))) == expected


def test_recursive_alias_is_a_problem_not_a_hang() -> None:
    text = with_section("cache:\n  paths: &a [/x, *a]\n")
    assert only_problem(text) == "balancer.yaml:4: cache.paths: expected text, got a list"


# --- health_check.path: an origin-form target of visible ASCII (SPEC §2, RFC 9112 3.2.1) ------


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/santé", "'é' is not visible ASCII (RFC 9112 3.2.1): percent-encode it, got '/santé'"),
        ("/€", "'€' is not visible ASCII"),
        ('"/a b"', "' ' is not visible ASCII"),
        ('"/ok HTTP/1.1\\r\\nX-Injected: 1"', "' ' is not visible ASCII"),  # no request splitting
        ('"/ok\\r\\nX-Injected: 1"', "'\\r' is not visible ASCII"),
        ('"/ok#top"', "'#' is not allowed in an origin-form target"),
        ("/{id}", "'{' is not allowed in an origin-form target"),
        ("/100%", "'%' must start a percent-encoding such as %20"),
        ("/%zz", "'%' must start a percent-encoding"),
    ],
)
def test_health_check_path_must_be_visible_ascii_origin_form(path: str, message: str) -> None:
    problem = only_problem(with_section(f"health_check:\n  path: {path}\n"))
    assert problem.startswith("balancer.yaml:4: health_check.path: "), problem
    assert message in problem


@pytest.mark.parametrize(
    "path", ["/health", "/sant%C3%A9", "/status?full=1&x=a/b?c", "/a;v=1/b:c@d~e_f.g-h!$'()*+,="]
)
def test_health_check_path_origin_forms_accepted(path: str) -> None:
    assert parse(with_section(f'health_check:\n  path: "{path}"\n')).health_check.path == path


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ('retries: "3"\n', "balancer.yaml:3: retries: expected a whole number, got the string '3' (remove the quotes)"),
        ("retries: '-1'\n", "balancer.yaml:3: retries: expected a whole number, got the string '-1' (remove the quotes)"),
        ('workers: "4"\n', "balancer.yaml:3: workers: expected a number >= 1 or 'auto', got the string '4' (remove the quotes)"),
        ('health_check:\n  rise: "2"\n', "balancer.yaml:4: health_check.rise: expected a whole number, got the string '2' (remove the quotes)"),
        ('limits:\n  max_headers: "100"\n', "balancer.yaml:4: limits.max_headers: expected a whole number, got the string '100' (remove the quotes)"),
        ('retry_budget:\n  percent: "12.5"\n', "balancer.yaml:4: retry_budget.percent: expected a number, got the string '12.5' (remove the quotes)"),
        ('adaptive:\n  weights: {cpu: "0.5"}\n', "balancer.yaml:4: adaptive.weights.cpu: expected a number, got the string '0.5' (remove the quotes)"),
        ('circuit_breaker:\n  failure_statuses: ["503"]\n', "balancer.yaml:4: circuit_breaker.failure_statuses: expected a whole number, got the string '503' (remove the quotes)"),
        ('cache:\n  enabled: "true"\n', "balancer.yaml:4: cache.enabled: expected true or false, got the string 'true' (remove the quotes)"),
        ('cache:\n  shared: "no"\n', "balancer.yaml:4: cache.shared: expected true or false, got the string 'no' (remove the quotes)"),
        ('backends:\n  - url: http://127.0.0.1:9001\n    weight: "2"\n', "balancer.yaml:3: backends[0].weight: expected a whole number, got the string '2' (remove the quotes)"),
    ],
)  # fmt: skip
def test_a_quoted_number_or_boolean_says_so(section: str, problem: str) -> None:
    text = section if section.startswith("backends:") else with_section(section)
    assert problems(text) == [problem]


def test_only_a_quoted_number_is_told_to_drop_its_quotes() -> None:
    hint = "(remove the quotes)"
    assert only_problem(with_section('retries: "3"\n')).endswith(f"got the string '3' {hint}")
    # not a number once unquoted, or not a whole one: no such advice
    assert only_problem(with_section('retries: "three"\n')).endswith("got 'three'")
    assert only_problem(with_section('retries: "2.5"\n')).endswith("got '2.5'")
    # durations and sizes are text: quoting them is fine
    config = parse(with_section('health_check:\n  interval: "2s"\n  timeout: "1"\n'))
    assert (config.health_check.interval, config.health_check.timeout) == (2.0, 1.0)
    assert parse(with_section('limits:\n  max_body: "1024"\n')).limits.max_body == 1024


STRATEGIES = ", ".join(STRATEGY_NAMES)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("strategy: [weighted]\n", "balancer.yaml:3: strategy: expected a strategy name, got a list ([weighted]); write strategy: weighted"),
        ("strategy:\n  - p2c\n", "balancer.yaml:4: strategy: expected a strategy name, got a list ([p2c]); write strategy: p2c"),
        ("strategy: [weighted, p2c]\n", f"balancer.yaml:3: strategy: expected a strategy name, got a list ([weighted, p2c]) (valid: {STRATEGIES})"),
        ("strategy: [fastest]\n", f"balancer.yaml:3: strategy: expected a strategy name, got a list ([fastest]) (valid: {STRATEGIES})"),
        ("strategy: {name: weighted}\n", f"balancer.yaml:3: strategy: expected a strategy name, got a mapping (valid: {STRATEGIES})"),
        ("strategy:\n", f"balancer.yaml:3: strategy: expected a strategy name, got nothing (null) (valid: {STRATEGIES})"),
        ("sticky:\n  mode: [cookie]\n", "balancer.yaml:4: sticky.mode: expected a sticky mode name, got a list ([cookie]); write mode: cookie"),
        ("log_level: [Debug]\n", "balancer.yaml:3: log_level: expected a log level name, got a list ([debug]); write log_level: debug"),
        ("hash:\n  on: [header]\n  name: X-User\n", "balancer.yaml:4: hash.on: expected a hash source name, got a list ([header]); write on: header"),
    ],
)  # fmt: skip
def test_a_list_where_a_name_is_expected_says_how_to_write_it(section: str, problem: str) -> None:
    assert problems(with_section(section)) == [problem]
