"""`balancer --check` and the start, through the real command: warnings (exit 0, on stderr,
with file and line), the messages for quoted numbers and lists, the keys parsed but not active
yet, and the message when there is no configuration file at all."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from support import Backend, Balancer

ROOT = Path(__file__).resolve().parent.parent
StartBalancer = Callable[..., Awaitable[Balancer]]
HEAD = "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
BACKENDS = "backends:\n  - url: http://127.0.0.1:9001\n  - url: http://127.0.0.1:9002\n"


def check(
    tmp_path: Path, text: str, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "balancer.yaml"
    path.write_text(text)
    return run_balancer("--check", "-c", str(path), *args, cwd=cwd)


def run_balancer(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m balancer` of this checkout, whatever the working directory."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "balancer", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=environment,
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            HEAD + BACKENDS.replace("9001\n", "9001\n    weight: 3\n", 1),
            "5: backends[0].weight: round_robin ignores weights (only 0 counts: no new requests):"
            " weight 3 gets the same share as 1; write strategy: weighted to share by weight",
        ),
        (
            HEAD + "health_check:\n  interval: 1s\n  timeout: 5s\n" + BACKENDS,
            "5: health_check.timeout: 5s is longer than health_check.interval (1s): a probe still"
            " running delays the next, so a backend that stops answering is probed every 6s"
            " (timeout + interval), not every 1s",
        ),
        (
            HEAD + "backends:\n  - {url: 'http://127.0.0.1:9001', weight: 0}\n",
            "4: backends: every backend has weight 0: nothing will be routed"
            " (every request gets 503)",
        ),
        (
            HEAD + "backends:\n  - url: http://127.0.0.1:9001\n  - url: https://app.internal\n",
            "5: backends[1].url: no port: 443 is assumed (https's default)",
        ),
    ],
)
def test_check_warns_on_stderr_with_file_and_line_and_exits_0(
    tmp_path: Path, text: str, line: str
) -> None:
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: {tmp_path / 'balancer.yaml'}:{line}"]
    assert "configuration is valid" in result.stdout


@pytest.mark.parametrize(
    ("section", "line"),
    [
        ('retries: "3"\n', "3: retries: expected a whole number, got the string '3' (remove the quotes)"),
        ("cache:\n  enabled: 'true'\n", "4: cache.enabled: expected true or false, got the string 'true' (remove the quotes)"),
        ("strategy: [weighted]\n", "3: strategy: expected a strategy name, got a list ([weighted]); write strategy: weighted"),
        ("sticky:\n  mode: [cookie]\n", "4: sticky.mode: expected a sticky mode name, got a list ([cookie]); write mode: cookie"),
        ("log_level: [info]\n", "3: log_level: expected a log level name, got a list ([info]); write log_level: info"),
    ],
)  # fmt: skip
def test_check_says_what_a_quoted_number_or_a_list_is(
    tmp_path: Path, section: str, line: str
) -> None:
    result = check(tmp_path, HEAD + section + BACKENDS)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{tmp_path / 'balancer.yaml'}:{line}"]


def test_check_names_the_keys_parsed_but_not_active_yet(tmp_path: Path) -> None:
    plain = check(tmp_path, HEAD + BACKENDS)
    assert plain.returncode == 0 and plain.stderr == ""
    assert "not active" not in plain.stdout and "(no token)" in plain.stdout
    extra = "admin:\n  listen: 127.0.0.1:0\n  token: s3cret\ncache: {enabled: true}\n"
    extra += "compression: {enabled: true}\n"
    result = check(tmp_path, "listen: 127.0.0.1:0\n" + extra + BACKENDS, "--workers", "3")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if "not active" in line] == [
        "cache: parsed, not active yet (nothing is cached: every request goes to a backend)",
        "compression: parsed, not active yet (responses pass as the backend sent them, "
        "never gzipped)",
    ]
    for claim in ("cache on", "compression on", "s3cret"):
        assert claim not in result.stdout
    assert "(token required)" in result.stdout  # it acts now, and the summary says so
    assert result.stderr == ""


async def test_start_logs_one_warning_per_inactive_key(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    urls = "".join(f"  - url: {backend.url}\n" for backend in backends)
    text = HEAD.replace("}", ", token: x}") + "cache: {enabled: true}\nbackends:\n" + urls
    balancer = await balancer_factory([], config=text)
    warnings = [
        line for line in balancer.stderr().splitlines() if " WARNING balancer.config:" in line
    ]
    assert [line.split(" WARNING ", 1)[1] for line in warnings] == [
        "balancer.config: cache: parsed, not active yet (nothing is cached: every request "
        "goes to a backend)",
    ]


async def test_start_logs_each_warning_once_with_its_line(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    urls = "".join(f"  - url: {backend.url}\n    weight: 2\n" for backend in backends)
    balancer = await balancer_factory([], config=HEAD + "backends:\n" + urls)
    warnings = [
        line for line in balancer.stderr().splitlines() if " WARNING balancer.config:" in line
    ]
    config = tmp_path / "balancer0" / "balancer.yaml"
    assert [line.split(" WARNING ", 1)[1] for line in warnings] == [
        f"balancer.config: {config}:5: backends[0].weight: round_robin ignores weights (only 0"
        " counts: no new requests): weight 2 gets the same share as 1; write strategy: weighted"
        " to share by weight (1 more backend(s) have a weight above 1)"
    ]


def test_no_configuration_file_at_all_says_how_to_pass_one(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "BALANCER_CONFIG"}
    for args in (("--check",), ()):
        result = subprocess.run(
            [sys.executable, "-m", "balancer", *args],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(ROOT)},
        )
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            "balancer: no configuration file: pass one with -c FILE or set $BALANCER_CONFIG"
            " (there is no ./balancer.yaml either)"
        ]
