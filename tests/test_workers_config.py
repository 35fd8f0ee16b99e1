"""SPEC §6: several workers with sticky sessions need Redis (each worker's in-process table is
its own), whether the workers come from `workers: N`, `workers: auto` or `--workers`; an error
at `--check` and at start (exit 2), with the same message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from balancer.config import ConfigError, parse_config

MESSAGE = (
    "workers: several workers need redis.url for sticky sessions "
    "(a per-worker table would break stickiness)"
)
HEAD = "listen: 127.0.0.1:0\nadmin: {listen: 127.0.0.1:0}\n"
BACKENDS = "backends:\n  - url: http://127.0.0.1:9001\n"
STICKY = "sticky:\n  mode: cookie\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "balancer.yaml", env={})
    return caught.value.lines()


@pytest.mark.parametrize("workers", ["workers: 2\n", "workers: auto\n", "workers: ${W:-auto}\n"])
@pytest.mark.parametrize("mode", ["cookie", "header", "ip"])
def test_several_workers_with_sticky_sessions_need_redis(workers: str, mode: str) -> None:
    text = workers + f"sticky:\n  mode: {mode}\n" + BACKENDS
    with mock.patch("os.cpu_count", return_value=1):  # auto is several, even on one CPU
        assert problems(text) == [f"balancer.yaml:1: {MESSAGE}"]
        with_redis = text + "redis:\n  url: redis://127.0.0.1:6379/0\n"
        assert parse_config(with_redis, env={}).sticky.mode == mode
        sticky_off = text.replace(f"mode: {mode}", "mode: off")
        assert parse_config(sticky_off, env={}).sticky.mode == "off"
        one_worker = text.replace(workers, "workers: 1\n")
        assert parse_config(one_worker, env={}).sticky.mode == mode  # its own table is the one


def run(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "balancer.yaml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "balancer", "-c", str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("check", [["--check"], []], ids=["check", "start"])
def test_the_command_refuses_it_at_check_and_at_start(tmp_path: Path, check: list[str]) -> None:
    path = tmp_path / "balancer.yaml"
    result = run(tmp_path, HEAD + "workers: 2\n" + STICKY + BACKENDS, *check)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"{path}:3: {MESSAGE}"]


@pytest.mark.parametrize("workers", ["2", "auto"])
@pytest.mark.parametrize("check", [["--check"], []], ids=["check", "start"])
def test_workers_on_the_command_line_count_too(
    tmp_path: Path, check: list[str], workers: str
) -> None:
    path = tmp_path / "balancer.yaml"
    text = HEAD + STICKY + BACKENDS
    result = run(tmp_path, text, *check, "--workers", workers)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"{path}: {MESSAGE}"]
    fine = run(tmp_path, text, "--check", "--workers", "1")
    assert fine.returncode == 0, fine.stderr
