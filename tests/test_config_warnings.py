"""What `balancer --check` and the start log say beyond errors: keys parsed but not active yet
(balancer.inactive) and warnings about valid files that probably mean something else
(balancer.config_warnings). Both are pure over the parsed Config and its lines."""

from __future__ import annotations

import pytest
from test_config import SPEC_EXAMPLE

from balancer import inactive as inactive_module
from balancer.config import Config, parse_config, summary
from balancer.config_warnings import config_warnings
from balancer.inactive import inactive

ONE_BACKEND = "backends:\n  - url: http://127.0.0.1:9001\n"
CACHE = "cache: parsed, not active yet (nothing is cached: every request goes to a backend)"
COMPRESSION = (
    "compression: parsed, not active yet (responses pass as the backend sent them, never gzipped)"
)


def parse(text: str) -> Config:
    return parse_config(text, "balancer.yaml", env={})


def warnings(text: str) -> list[str]:
    config = parse(text)
    return [warning.render(config.source) for warning in config_warnings(config)]


@pytest.mark.parametrize(
    ("section", "notices"),
    [
        ("admin:\n  token: x\n", []),  # acts: no notice
        ("cache:\n  enabled: true\n", [CACHE]),
        ("cache:\n  max_memory: 1MB\n", [CACHE]),  # a cache key set, enabled or not
        ("compression:\n  enabled: true\n", [COMPRESSION]),
        ("compression:\n  types: [text/html]\n", [COMPRESSION]),
        ("workers: 2\n", []),  # acts: no notice
        ("limits:\n  max_connections: 500\n", []),  # acts: no notice
        (
            "workers: 3\nadmin: {token: x}\ncache: {enabled: true}\ncompression: {enabled: true}\n",
            [CACHE, COMPRESSION],
        ),
        # set to what would not matter: nothing to say
        ("admin:\n  token: ''\n", []),
        ("workers: 1\n", []),
        ("cache:\n  enabled: false\n", []),
        ("compression:\n  enabled: false\n  min_size: 1KB\n", []),
        ("limits:\n  max_connections: 10000\n", []),
    ],
)
def test_keys_parsed_but_not_active_are_named_in_the_summary(
    section: str, notices: list[str]
) -> None:
    config = parse(ONE_BACKEND + section)
    assert [entry.notice for entry in inactive(config)] == notices
    lines = summary(config).splitlines()
    assert [line for line in lines if "not active" in line] == notices
    for claim in ("cache on", "compression on"):  # claimed only once they act
        assert claim not in summary(config)


def test_the_spec_example_sets_nothing_inactive() -> None:
    assert inactive(parse(SPEC_EXAMPLE)) == []
    assert "(no token)" in summary(parse(SPEC_EXAMPLE))


def test_a_feature_that_lands_only_loses_its_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    text = ONE_BACKEND + "admin: {token: x}\ncache: {enabled: true}\ncompression: {enabled: true}\n"
    monkeypatch.setattr(inactive_module, "INACTIVE", ())
    shown = summary(parse(text))
    assert "token required" in shown and "cache on" in shown and "compression on" in shown
    assert "not active" not in shown


def test_config_keeps_the_line_of_each_key() -> None:
    config = parse(ONE_BACKEND + "health_check:\n  timeout: 9s\n")
    assert config.lines["backends"] == 2  # a block sequence starts at its first item
    assert config.lines["backends[0].url"] == 2
    assert config.lines["health_check"] == 4 and config.lines["health_check.timeout"] == 4
    assert "retries" not in config.lines  # only what the file sets
    assert config == parse(ONE_BACKEND + "\n\nhealth_check: {timeout: 9s}\n")  # lines aside


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "backends:\n  - url: http://127.0.0.1:9001\n    weight: 3\n  - url: http://127.0.0.1:9002\n",
            ["balancer.yaml:3: backends[0].weight: round_robin ignores weights (only 0 counts: no new requests): weight 3 gets the same share as 1; write strategy: weighted to share by weight"],
        ),
        (
            "strategy: p2c\nbackends:\n  - {url: 'http://a:1', weight: 2}\n  - {url: 'http://b:1', weight: 5}\n  - {url: 'http://c:1', weight: 4}\n",
            ["balancer.yaml:3: backends[0].weight: p2c ignores weights (only 0 counts: no new requests): weight 2 gets the same share as 1; write strategy: weighted to share by weight (2 more backend(s) have a weight above 1)"],
        ),
        (
            "health_check:\n  interval: 1s\n  timeout: 3s\n" + ONE_BACKEND,
            ["balancer.yaml:3: health_check.timeout: 3s is longer than health_check.interval (1s): a probe still running delays the next, so a backend that stops answering is probed every 4s (timeout + interval), not every 1s"],
        ),
        (
            "backends:\n  - {url: 'http://a:1', weight: 0}\n  - {url: 'http://b:1', weight: 0}\n",
            ["balancer.yaml:2: backends: every backend has weight 0: nothing will be routed (every request gets 503)"],
        ),
        (
            "backends:\n  - url: http://app.internal\n  - url: https://secure.internal/\n  - url: http://c:8080\n",
            [
                "balancer.yaml:2: backends[0].url: no port: 80 is assumed (http's default)",
                "balancer.yaml:3: backends[1].url: no port: 443 is assumed (https's default)",
            ],
        ),
        (
            "backends:\n  - url: http://a\n    weight: 2\nhealth_check: {interval: 1s, timeout: 2s}\n",
            [
                "balancer.yaml:2: backends[0].url: no port: 80 is assumed (http's default)",
                "balancer.yaml:3: backends[0].weight: round_robin ignores weights (only 0 counts: no new requests): weight 2 gets the same share as 1; write strategy: weighted to share by weight",
                "balancer.yaml:4: health_check.timeout: 2s is longer than health_check.interval (1s): a probe still running delays the next, so a backend that stops answering is probed every 3s (timeout + interval), not every 1s",
            ],
        ),
    ],
)  # fmt: skip
def test_warnings_name_the_key_and_line(text: str, expected: list[str]) -> None:
    assert warnings(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        SPEC_EXAMPLE,
        # weights are what these strategies share by
        "strategy: weighted\nbackends:\n  - {url: 'http://a:1', weight: 3}\n",
        "strategy: least_connections\nbackends:\n  - {url: 'http://a:1', weight: 3}\n",
        "strategy: consistent_hash\nbackends:\n  - {url: 'http://a:1', weight: 3}\n",
        # weight 0 acts under every strategy (no new requests), one at 0 is not all at 0
        "backends:\n  - {url: 'http://a:1', weight: 0}\n  - {url: 'http://b:1'}\n",
        # a timeout equal to the interval, and an explicit default port
        "health_check: {interval: 2s, timeout: 2s}\nbackends:\n  - url: http://a:80\n",
    ],
)
def test_no_warning(text: str) -> None:
    assert warnings(text) == []
