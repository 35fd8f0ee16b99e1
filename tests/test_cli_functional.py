"""The `balancer` command line (SPEC §1)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from balancer import __version__

COMMAND = [sys.executable, "-m", "balancer"]
VALID = """\
listen: 127.0.0.1:0
admin: {listen: 127.0.0.1:0}
backends:
  - url: http://127.0.0.1:9001
    name: app1
  - url: http://127.0.0.1:9002
"""


def run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_check_valid_file_prints_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    result = run("--check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "app1" in result.stdout and "127.0.0.1:9002" in result.stdout


def test_check_reports_every_problem_with_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\nstrategy: round_robbin\nbackends:\n"
        "  - url: http://127.0.0.1:9001\n    wieght: 2\n  - url: ftp://x\n"
    )
    result = run("--check", "-c", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert "bad.yaml:2: strategy:" in lines[0]
    assert "bad.yaml:5: backends[0]: unknown key 'wieght'" in lines[1]
    assert "bad.yaml:6: backends[1].url:" in lines[2]


def test_config_comes_from_env_then_cwd(tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text(VALID)
    assert run("--check", env={"BALANCER_CONFIG": str(path)}).returncode == 0
    (tmp_path / "balancer.yaml").write_text(VALID.replace("app1", "fromcwd"))
    result = run("--check", cwd=tmp_path, env={"BALANCER_CONFIG": ""})
    assert result.returncode == 0 and "fromcwd" in result.stdout


def test_missing_file_is_exit_2(tmp_path: Path) -> None:
    result = run("--check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr


def test_bad_log_level_override_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    result = run("--check", "-c", str(path), "--log-level", "loud")
    assert result.returncode == 2
    assert "--log-level" in result.stderr


def test_port_in_use_is_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(VALID.replace("listen: 127.0.0.1:0\n", f"listen: 127.0.0.1:{port}\n", 1))
        result = run("-c", str(path))
    assert result.returncode == 1
    assert str(port) in result.stderr


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    result = run("--check", "-c", str(root / "balancer.yaml"))
    assert result.returncode == 0, result.stderr


def test_refuses_to_serve_on_aiohttps_lenient_python_parser(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID)
    result = run("-c", str(path), env={"AIOHTTP_NO_EXTENSIONS": "1"})
    assert result.returncode == 1
    assert "pure-Python HTTP parser" in result.stderr
