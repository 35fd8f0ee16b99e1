"""The `alerts` section (SPEC §2): its defaults, each rule over its defaults, `off` drops one,
and every hostile value a problem with its key path, line and, where one is close, a
suggestion."""

from __future__ import annotations

import pytest

from balancer.config import (
    ALERT_RULES,
    AlertRuleConfig,
    AlertsConfig,
    Config,
    ConfigError,
    CooldownConfig,
    parse_config,
    summary,
)

ONE_BACKEND = "backends:\n  - url: http://127.0.0.1:9001\n"


def parse(section: str) -> Config:
    return parse_config(ONE_BACKEND + section, "balancer.yaml", env={"HOOK": "https://h/x"})


def problems(section: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(section)
    return caught.value.lines()


def only_problem(section: str) -> str:
    found = problems(section)
    assert len(found) == 1, found
    return found[0]


def names(config: Config) -> list[str]:
    return [rule.name for rule in config.alerts.rules]


def test_defaults_are_the_spec_s() -> None:
    alerts = parse("").alerts
    assert alerts == AlertsConfig(True, 10.0, ALERT_RULES, "", CooldownConfig())
    assert (alerts.cooldown.low, alerts.cooldown.medium) == (300.0, 180.0)
    assert (alerts.cooldown.high, alerts.cooldown.critical) == (60.0, 30.0)
    assert alerts.rule("latency_p99") == AlertRuleConfig("latency_p99", "medium", 2.0, 60.0)


@pytest.mark.parametrize(
    "section", ["alerts:\n", "alerts: ~\n", "alerts:\n  rules:\n", "alerts:\n  rules: {}\n",
                "alerts:\n  cooldown:\n", "alerts:\n  rules:\n    breaker_open:\n",
                "alerts:\n  webhook: ''\n", "alerts:\n  webhook:\n"],
)  # fmt: skip
def test_absent_or_null_keys_take_their_defaults(section: str) -> None:
    assert parse(section) == parse("")


def test_the_spec_example_parses_to_the_defaults() -> None:
    section = """\
alerts:
  enabled: true
  interval: 10s
  rules:
    backend_down:   {severity: critical}
    no_backend:     {severity: critical}
    breaker_open:   {severity: high}
    error_ratio:    {above: 0.05, over: 1m, severity: high}
    latency_p95:    {above: 1s, over: 1m, severity: medium}
    latency_p99:    {above: 2s, over: 1m, severity: medium}
    store_down:     {severity: medium}
  webhook: ""
  cooldown: {low: 5m, medium: 3m, high: 1m, critical: 30s}
"""
    assert parse(section) == parse("")


def test_a_rule_takes_what_it_sets_over_its_defaults() -> None:
    config = parse(
        "alerts:\n  interval: 250ms\n  webhook: ${HOOK}\n"
        "  rules:\n    error_ratio: {above: 0.2}\n    latency_p95: {over: 30s, severity: low}\n"
        "    latency_p99: {above: 750ms}\n  cooldown: {low: 0s}\n"
    )
    alerts = config.alerts
    assert alerts.interval == 0.25 and alerts.webhook == "https://h/x"
    assert alerts.rule("error_ratio") == AlertRuleConfig("error_ratio", "high", 0.2, 60.0)
    assert alerts.rule("latency_p95") == AlertRuleConfig("latency_p95", "low", 1.0, 30.0)
    assert alerts.rule("latency_p99") == AlertRuleConfig("latency_p99", "medium", 0.75, 60.0)
    assert alerts.cooldown == CooldownConfig(low=0.0)
    assert names(config) == [rule.name for rule in ALERT_RULES]  # the file's order is not ours


@pytest.mark.parametrize("off", ["off", "'off'", '"off"'])
def test_a_rule_set_to_off_is_dropped(off: str) -> None:
    config = parse(f"alerts:\n  rules:\n    breaker_open: {off}\n    store_down: {off}\n")
    assert names(config) == [
        "backend_down", "no_backend", "error_ratio", "latency_p95", "latency_p99"
    ]  # fmt: skip
    assert config.alerts.rule("breaker_open") is None


def test_every_rule_off_leaves_none() -> None:
    rules = "".join(f"    {rule.name}: off\n" for rule in ALERT_RULES)
    assert parse("alerts:\n  rules:\n" + rules).alerts.rules == ()
    assert "alerts every 10s: no rules" in summary(parse("alerts:\n  rules:\n" + rules))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "alerts:\n  rules:\n    backend_dwn: {severity: high}\n",
            "balancer.yaml:5: alerts.rules: unknown rule 'backend_dwn'; did you mean 'backend_down'?",
        ),
        (
            "alerts:\n  rules:\n    latency_p90: {above: 1s}\n",
            "balancer.yaml:5: alerts.rules: unknown rule 'latency_p90'; did you mean 'latency_p99'?",
        ),
        (
            "alerts:\n  rules:\n    disk_full: {severity: high}\n",
            "balancer.yaml:5: alerts.rules: unknown rule 'disk_full' (valid: backend_down, "
            "no_backend, breaker_open, error_ratio, latency_p95, latency_p99, store_down)",
        ),
        (
            "alerts:\n  rules:\n    backend_down: {severity: hihg}\n",
            "balancer.yaml:5: alerts.rules.backend_down.severity: unknown severity 'hihg' "
            "(valid: low, medium, high, critical); did you mean 'high'?",
        ),
        (
            "alerts:\n  rules:\n    backend_down: {severity: warning}\n",
            "balancer.yaml:5: alerts.rules.backend_down.severity: unknown severity 'warning' "
            "(valid: low, medium, high, critical)",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: {above: -0.1}\n",
            "balancer.yaml:5: alerts.rules.error_ratio.above: must be between 0 and 1, got -0.1",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: {above: 5}\n",
            "balancer.yaml:5: alerts.rules.error_ratio.above: must be between 0 and 1, got 5",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: {above: 5%}\n",
            "balancer.yaml:5: alerts.rules.error_ratio.above: expected a number, got '5%'",
        ),
        (
            "alerts:\n  rules:\n    latency_p95: {above: -1s}\n",
            "balancer.yaml:5: alerts.rules.latency_p95.above: invalid duration '-1s': "
            "must not be negative",
        ),
        (
            "alerts:\n  rules:\n    latency_p99: {over: 10m}\n",
            "balancer.yaml:5: alerts.rules.latency_p99.over: must be at most 5m (the traffic "
            "kept is the last five minutes), got '10m'",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: {over: 1s}\n",
            "balancer.yaml:5: alerts.rules.error_ratio.over: must be at least 2s (traffic is "
            "sampled every 2s), got '1s'",
        ),
        (
            "alerts:\n  rules:\n    backend_down: {above: 1}\n",
            "balancer.yaml:5: alerts.rules.backend_down: unknown key 'above' (valid: severity)",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: {abov: 1}\n",
            "balancer.yaml:5: alerts.rules.error_ratio: unknown key 'abov'; did you mean 'above'?",
        ),
        (
            "alerts:\n  rules:\n    no_backend: false\n",
            "balancer.yaml:5: alerts.rules.no_backend: expected a mapping such as "
            "{severity: critical}, or off; got a boolean (false; YAML reads yes/no/on/off as "
            "booleans)",
        ),
        (
            "alerts:\n  rules:\n    error_ratio: 0.1\n",
            "balancer.yaml:5: alerts.rules.error_ratio: expected a mapping such as "
            "{above: 0.05, over: 1m, severity: high}, or off; got 0.1",
        ),
        (
            "alerts:\n  rules: [backend_down]\n",
            "balancer.yaml:4: alerts.rules: expected a mapping of backend_down, no_backend, "
            "breaker_open, error_ratio, latency_p95, latency_p99, store_down; got a list",
        ),
        (
            "alerts:\n  rules:\n    store_down: off\n    store_down: {}\n",
            "balancer.yaml:6: alerts.rules: duplicate key 'store_down' (first at line 5)",
        ),
        (
            "alerts:\n  webhook: ftp://hooks.example.com/x\n",
            "balancer.yaml:4: alerts.webhook: must be an http:// or https:// URL, "
            "got 'ftp://hooks.example.com/x'",
        ),
        (
            "alerts:\n  webhook: hooks.example.com/x\n",
            "balancer.yaml:4: alerts.webhook: must be an http:// or https:// URL, "
            "got 'hooks.example.com/x'",
        ),
        (
            "alerts:\n  webhook: http://h:99999/x\n",
            "balancer.yaml:4: alerts.webhook: not a valid URL, got 'http://h:99999/x'",
        ),
        (
            "alerts:\n  webhook: https://h/x#frag\n",
            "balancer.yaml:4: alerts.webhook: a fragment is never sent: remove it, "
            "got 'https://h/x#frag'",
        ),
        (
            "alerts:\n  interval: 10ms\n",
            "balancer.yaml:4: alerts.interval: must be at least 100ms (each evaluation reads "
            "every backend's state), got '10ms'",
        ),
        (
            "alerts:\n  interval: 0s\n",
            "balancer.yaml:4: alerts.interval: must be greater than 0, got '0s'",
        ),
        (
            "alerts:\n  cooldown: {hihg: 1m}\n",
            "balancer.yaml:4: alerts.cooldown: unknown key 'hihg'; did you mean 'high'?",
        ),
        (
            "alerts:\n  cooldown: {low: -1m}\n",
            "balancer.yaml:4: alerts.cooldown.low: invalid duration '-1m': must not be negative",
        ),
        (
            "alerts:\n  enabled: maybe\n",
            "balancer.yaml:4: alerts.enabled: expected true or false, got 'maybe'",
        ),
        (
            "alerts:\n  enabeld: true\n",
            "balancer.yaml:4: alerts: unknown key 'enabeld'; did you mean 'enabled'?",
        ),
    ],
)
def test_hostile_values_are_problems_with_path_and_line(section: str, expected: str) -> None:
    assert only_problem(section) == expected


def test_every_problem_of_the_section_at_once() -> None:
    found = problems(
        "alerts:\n  interval: 1ms\n  webhook: gopher://x\n"
        "  rules:\n    error_ratio: {above: -1, over: 1h}\n    backend_dwn: {}\n"
    )
    assert [line.split(": ")[1] for line in found] == [
        "alerts.interval",
        "alerts.webhook",
        "alerts.rules.error_ratio.above",
        "alerts.rules.error_ratio.over",
        "alerts.rules",
    ]


def test_the_webhook_is_never_shown_in_full() -> None:
    config = parse("alerts:\n  webhook: https://user:pw@hooks.example.com:8443/T0K3N?key=s3\n")
    assert config.alerts.webhook == "https://user:pw@hooks.example.com:8443/T0K3N?key=s3"
    shown = summary(config) + repr(config)
    assert "alerts every 10s: backend_down" in shown
    assert "webhook https://hooks.example.com:8443/..." in shown
    for secret in ("user", "pw", "T0K3N", "s3"):
        assert secret not in shown


def test_the_summary_says_when_alerts_are_off() -> None:
    assert "alerts off" in summary(parse("alerts:\n  enabled: false\n")).splitlines()
