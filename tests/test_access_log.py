"""The access log (SPEC §6): its lines, unit by unit, then through the real command: json to a
file, text to stderr, reopened on SIGUSR1, switched on by a reload on a kept-alive
connection, whole lines from two workers, never a credential, flushed within a second."""

from __future__ import annotations

import asyncio
import json
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from balancer.access_log import AccessLog, Entry, chunks, json_line, text_line
from balancer.pipeline.access import sticky_outcome
from balancer.pipeline.sticky_stage import StickyPlan

from conftest import StartBalancer
from support import Backend, config_yaml, eventually

SECRET = "hunter2-do-not-log"


def entry(**changes: Any) -> Entry:
    base = Entry(1764637200.25, "10.0.0.1", "GET", "/a", 200, 12, 0.0042, "b0", 1, "-", "-")
    return base._replace(**changes)


def test_a_text_line_escapes_what_the_client_wrote() -> None:
    line = text_line(entry(target='/q?x="1"\\y\u00e9 z\x7f'))
    assert line == (
        '2025-12-02T01:00:00.250Z 10.0.0.1 "GET /q?x=\\"1\\"\\\\y\\xc3\\xa9\\x20z\\x7f" '
        "200 12 4.2 b0 1 - -\n"
    )
    assert line.count("\n") == 1 and line.isascii()


def test_a_json_line_has_exactly_the_spec_keys() -> None:
    record = json.loads(json_line(entry(target='/"\n', backend="-", attempts=0, status=503)))
    assert list(record) == [
        "time", "client", "method", "target", "status", "bytes", "duration_ms", "backend",
        "attempts", "cache", "sticky",
    ]  # fmt: skip
    assert record["status"] == 503 and isinstance(record["status"], int)
    assert record["target"] == '/"\n' and record["duration_ms"] == 4.2


def test_chunks_cut_at_line_ends_within_pipe_buf() -> None:
    lines = b"".join(b"%d %s\n" % (i, b"x" * (i % 300)) for i in range(2000))
    pieces = chunks(lines)
    assert b"".join(pieces) == lines
    assert all(len(p) <= select.PIPE_BUF and p.endswith(b"\n") for p in pieces)
    long = b"a" * 10000 + b"\n"
    assert chunks(b"x\n" + long + b"y\n") == [b"x\n", long, b"y\n"]


async def test_a_writer_that_falls_behind_drops_lines_and_never_grows(tmp_path: Path) -> None:
    access = AccessLog("json", str(tmp_path / "a.log"), max_pending=100)
    access.open()
    for _ in range(1000):
        access.entry(entry())
    assert len(access._pending) == 100 and access.dropped == 900
    await access.close()
    assert len((tmp_path / "a.log").read_text().splitlines()) == 100


def log_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_log(extra: str, path: str, format: str = "json") -> str:
    return extra + f"access_log:\n  format: {format}\n  path: '{path}'\n"


async def get(client: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    async with client.get(url, **kwargs) as response:
        await response.read()
        return response.status


async def test_json_lines_to_a_file_with_backend_attempts_and_no_credentials(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    dead = "http://127.0.0.1:9"  # nothing listens: connect refused, retried on b1
    extra = with_log("strategy: round_robin\nretries: 1\n", str(path))
    balancer = await balancer_factory([dead, backends[0].url], extra)
    secrets = {"Authorization": f"Bearer {SECRET}", "Cookie": f"sid={SECRET}"}
    async with aiohttp.ClientSession() as client:
        for _ in range(4):
            assert await get(client, balancer.url + "/x?y=1", headers=secrets) == 200
        async with client.post(balancer.url + "/sink", data=b"z" * 1000) as response:
            assert response.status == 200
    lines = await eventually(lambda: (got := log_lines(path)) and len(got) >= 5 and got)
    assert {line["backend"] for line in lines} == {"b1"}
    assert sorted(line["attempts"] for line in lines[:4]) in ([1, 1, 2, 2], [1, 2, 2, 2])
    first = lines[0]
    assert (first["method"], first["target"], first["status"]) == ("GET", "/x?y=1", 200)
    assert first["client"] == "127.0.0.1" and first["bytes"] > 0 and first["duration_ms"] > 0
    assert lines[4]["method"] == "POST"
    assert SECRET not in path.read_text() and SECRET not in balancer.stderr()


async def test_text_to_stderr_and_an_unroutable_request(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([backends[0].url], with_log("", "-", "text"))
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/backends/b0/disable") as response:
            assert response.status == 200
        assert await get(client, balancer.url + "/gone") == 503

    def logged() -> str | None:
        found = [line for line in balancer.stderr().splitlines() if '"GET /gone"' in line]
        return found[0] if found else None

    parts = (await eventually(logged)).split()
    assert parts[1:5] == ["127.0.0.1", '"GET', '/gone"', "503"]
    assert parts[7:] == ["-", "0", "-", "-"]  # no backend, no attempt, no cache, no sticky


async def test_sigusr1_reopens_the_file_after_a_rotation(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    balancer = await balancer_factory([backends[0].url], with_log("", str(path)))
    async with aiohttp.ClientSession() as client:
        assert await get(client, balancer.url + "/before") == 200
        await eventually(lambda: len(log_lines(path)) == 1)
        path.rename(tmp_path / "access.log.1")
        balancer.process.send_signal(signal.SIGUSR1)
        await eventually(lambda: "reopening the access log" in balancer.stderr())
        assert await get(client, balancer.url + "/after") == 200
    await eventually(lambda: len(log_lines(path)) == 1)
    assert log_lines(path)[0]["target"] == "/after"
    assert [line["target"] for line in log_lines(tmp_path / "access.log.1")] == ["/before"]
    assert balancer.process.returncode is None  # SIGUSR1 did not end it


async def test_a_reload_turns_it_on_and_off_on_a_kept_alive_connection(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    balancer = await balancer_factory([backends[0].url])
    config = balancer.stderr_path.parent / "balancer.yaml"
    plain = config.read_text()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client:
        assert await get(client, balancer.url + "/off") == 200
        config.write_text(with_log(plain, str(path)))
        async with aiohttp.ClientSession() as admin:
            async with admin.post(balancer.admin_url + "/reload") as response:
                assert response.status == 200
            assert await get(client, balancer.url + "/on") == 200  # the same connection
            await eventually(lambda: [line["target"] for line in log_lines(path)] == ["/on"])
            config.write_text(plain)
            async with admin.post(balancer.admin_url + "/reload") as response:
                assert response.status == 200
            assert await get(client, balancer.url + "/off-again") == 200
    await asyncio.sleep(1.5)  # a window for a line that must not come (flushed within 1 s)
    assert [line["target"] for line in log_lines(path)] == ["/on"]


async def test_two_workers_write_whole_lines_to_one_file(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    balancer = await balancer_factory(
        [b.url for b in backends], with_log("workers: 2\n", str(path))
    )
    target = "/" + "p" * 3000  # lines near PIPE_BUF, so a torn write would show

    async def one(client: aiohttp.ClientSession) -> None:
        assert await get(client, balancer.url + target, headers={"Connection": "close"}) == 200

    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(one(client) for _ in range(200)))
    lines = await eventually(lambda: len(got := log_lines(path)) >= 200 and got, timeout=10)
    assert len(lines) == 200 and all(line["target"] == target for line in lines)


def test_an_access_log_that_cannot_be_opened_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "balancer.yaml"
    missing = tmp_path / "no-such-dir" / "access.log"
    config.write_text(with_log(config_yaml(["http://127.0.0.1:9"]), str(missing)))
    result = subprocess.run(
        [sys.executable, "-m", "balancer", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert f"cannot open the access log {missing}" in result.stderr


@pytest.mark.parametrize("bad", ["format: verbose", "format: [json]", "path: ''", "path: /tmp/"])
def test_bad_access_log_keys_are_config_errors(tmp_path: Path, bad: str) -> None:
    config = tmp_path / "balancer.yaml"
    config.write_text(config_yaml(["http://127.0.0.1:9"]) + f"access_log:\n  {bad}\n")
    result = subprocess.run(
        [sys.executable, "-m", "balancer", "-c", str(config), "--check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "access_log." in result.stderr, result.stderr


def test_the_sticky_outcome() -> None:
    pinned, other = object(), object()
    assert sticky_outcome(None, []) == "-"
    assert sticky_outcome(StickyPlan("k", pinned, None), [pinned]) == "hit"  # type: ignore[arg-type]
    assert sticky_outcome(StickyPlan("k", pinned, None), [pinned, other]) == "repin"  # type: ignore[arg-type]
    assert sticky_outcome(StickyPlan("k", None, None), [other]) == "new"  # type: ignore[list-item]


async def test_a_client_that_leaves_before_its_answer_is_a_499_line(
    backends: list[Backend], balancer_factory: StartBalancer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    balancer = await balancer_factory([backends[0].url], with_log("", str(path)))
    host, port = balancer.host_port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /slow?delay=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await eventually(lambda: backends[0].seen)  # it reached the backend
    writer.close()
    lines = await eventually(lambda: log_lines(path), timeout=10)
    assert [(line["target"], line["status"], line["backend"]) for line in lines] == [
        ("/slow?delay=5", 499, "b0")
    ]
    del reader
