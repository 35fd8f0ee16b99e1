"""`workers: 2` as the real command runs it (SPEC §6): one port served by two processes, one
admin port that describes both, signals passed on, a dead worker replaced."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import support
from conftest import StartBalancer
from support import Backend, Balancer, eventually, fresh_get, pids, status

WORKERS = "workers: 2\n"


async def send(balancer: Balancer, count: int) -> None:
    for _ in range(count):
        code, _ = await fresh_get(balancer.url + "/")
        assert code == 200


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie nobody reaped yet (an orphan's reaper may be slow)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def admin_directory(pid: int) -> Path:
    """The private directory of a worker's admin socket, from its command line."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return Path(argv[argv.index("--admin-path") + 1]).parent


async def test_two_workers_serve_one_port_and_status_counts_every_request(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    assert balancer.process.stdout is not None
    for _ in backends:  # after the listening lines, once: the backend list
        line = await asyncio.wait_for(balancer.process.stdout.readline(), 10)
        assert line.decode().startswith("backend b")
    await send(balancer, 200)
    answer = await status(balancer)
    workers = answer["workers"]
    assert [w["index"] for w in workers] == [0, 1]
    assert len(set(pids(answer))) == 2 and balancer.process.pid not in pids(answer)
    assert all(w["up"] for w in workers)
    assert all(w["requests_total"] > 0 for w in workers), workers  # both served some
    assert sum(w["requests_total"] for w in workers) == 200
    assert sum(b["requests_total"] for b in answer["backends"]) == 200
    assert sum(b["attempts_total"] for b in answer["backends"]) == 200
    assert [b["name"] for b in answer["backends"]] == ["b0", "b1"]
    assert len(backends[0].seen) + len(backends[1].seen) == 200
    code, ready = await fresh_get(balancer.admin_url + "/health/ready")
    assert code == 200 and json.loads(ready)["workers_ready"] == 2


async def test_metrics_describe_the_whole_balancer_and_pass_promtool(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    await send(balancer, 60)
    answer = await status(balancer)
    assert all(w["requests_total"] > 0 for w in answer["workers"])
    code, text = await fresh_get(balancer.admin_url + "/metrics")
    assert code == 200
    samples = [line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#")]
    values = {name: float(value) for name, value in samples}
    assert values["balancer_workers_up"] == 2.0
    requests = [v for n, v in values.items() if n.startswith("balancer_requests_total{")]
    assert sum(requests) == 60
    counts = [
        v for n, v in values.items() if n.startswith("balancer_request_duration_seconds_count")
    ]
    assert sum(counts) == 60
    assert values['balancer_backend_healthy{backend="b0"}'] == 1.0  # a 0/1 gauge: not summed
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_drain_through_the_admin_port_reaches_both_workers(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/backends/b0/drain") as response:
            assert response.status == 200
            assert (await response.json())["state"] == "draining"
        async with client.post(balancer.admin_url + "/backends/nope/drain") as response:
            assert response.status == 404
            assert "nope" in (await response.json())["error"]
    before = await status(balancer)
    assert before["backends"][0]["state"] == "draining"
    seen = len(backends[0].seen)
    for _ in range(10):  # the kernel spreads fresh connections unevenly: until both took some
        await send(balancer, 40)
        after = await status(balancer)
        served = [
            a["requests_total"] - b["requests_total"]
            for a, b in zip(after["workers"], before["workers"], strict=True)
        ]
        if all(count > 0 for count in served):
            break
    assert all(count > 0 for count in served), served  # both workers took some...
    assert len(backends[0].seen) == seen  # ...and neither sent one to the drained backend
    assert len(backends[1].seen) >= 40


async def test_a_killed_worker_is_replaced_and_keeps_the_admin_modes(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/backends/b0/disable") as response:
            assert response.status == 200
    old = pids(await status(balancer))
    os.kill(old[0], signal.SIGKILL)

    async def marked_down() -> bool:
        workers = (await status(balancer))["workers"]  # 200 meanwhile, never a 500
        return not workers[0]["up"] or workers[0]["pid"] != old[0]

    await eventually(marked_down)
    await send(balancer, 10)  # the other worker answers meanwhile

    async def replaced() -> list[dict[str, Any]] | None:
        workers: list[dict[str, Any]] = (await status(balancer))["workers"]
        return workers if workers[0]["up"] and workers[0]["pid"] != old[0] else None

    workers = await eventually(replaced, timeout=15)
    new = workers[0]["pid"]
    assert workers[0]["restarts"] == 1 and workers[1]["pid"] == old[1] and alive(new)
    stderr = balancer.stderr()
    assert f"worker 0 (pid {old[0]}) killed by SIGKILL; restarting it in 0.5s" in stderr
    assert f"worker 0 restarted: pid {new}" in stderr
    seen = len(backends[0].seen)
    before = await status(balancer)
    await send(balancer, 40)
    after = await status(balancer)
    assert after["workers"][0]["requests_total"] > before["workers"][0]["requests_total"]
    assert len(backends[0].seen) == seen  # the new worker got the disable too


async def test_sigterm_lets_each_worker_finish_its_request_then_exits_0(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    workers = pids(await status(balancer))
    slow = asyncio.ensure_future(fresh_get(balancer.url + "/slow?delay=1"))
    await eventually(lambda: backends[0].seen or backends[1].seen)
    balancer.process.send_signal(signal.SIGTERM)
    code, text = await asyncio.wait_for(slow, 10)
    assert code == 200 and text.startswith("slow b")
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 0
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(aiohttp.ClientConnectionError):
        await fresh_get(balancer.url + "/")


async def test_a_second_sigterm_is_passed_on_and_cuts_what_is_in_flight(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    workers = pids(await status(balancer))
    slow = asyncio.ensure_future(fresh_get(balancer.url + "/slow?delay=3"))
    await eventually(lambda: backends[0].seen or backends[1].seen)
    balancer.process.send_signal(signal.SIGTERM)
    # A second signal that reached the worker before it handled the first would be one signal.
    await eventually(lambda: "waiting up to 30s for 1 request(s) in flight" in balancer.stderr())
    balancer.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(balancer.process.wait(), 10) == 1
    assert "second SIGTERM: passing it on" in balancer.stderr()
    assert "second signal: cutting 1 request(s) still in flight" in balancer.stderr()
    assert not any(alive(pid) for pid in workers)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(slow, 5)


async def test_sighup_reloads_every_worker(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    workers = pids(await status(balancer))
    balancer.process.send_signal(signal.SIGHUP)

    def each_logged() -> bool:
        stderr = balancer.stderr()
        return all(f"balancer.control[{pid}]: reloaded" in stderr for pid in workers)

    await eventually(each_logged)
    assert pids(await status(balancer)) == workers  # nobody died of it
    code, _ = await fresh_get(balancer.url + "/")
    assert code == 200


async def test_workers_stop_when_their_supervisor_is_killed(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    workers = pids(await status(balancer))
    directory = admin_directory(workers[0])
    assert directory.is_dir()
    balancer.process.kill()
    await balancer.process.wait()
    await eventually(lambda: not any(alive(pid) for pid in workers), timeout=10)
    assert balancer.stderr().count("the supervisor is gone: stopping") == 2
    assert not directory.exists()  # the last worker out removed the private directory


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_status(
    tmp_path: Path,
) -> None:
    config = tmp_path / "balancer.yaml"
    config.write_text(support.config_yaml(["http://127.0.0.1:9"], WORKERS))
    result = subprocess.run(
        [*support.balancer_command(), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"},  # each worker refuses to serve
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert "refusing to serve" in result.stderr
    assert "exited with status 1 while starting" in result.stderr
    exits = re.findall(r"worker (\d) \(pid \d+\) (?:exited|killed)", result.stderr)
    assert sorted(exits) == ["0", "1"]  # the other one was stopped, and waited for


async def test_workers_on_the_command_line(
    backends: list[Backend], balancer_factory: StartBalancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = [sys.executable, "-m", "balancer", "--workers", "2"]
    monkeypatch.setattr(support, "balancer_command", lambda: command)
    balancer = await balancer_factory([b.url for b in backends])
    await send(balancer, 40)
    workers = (await status(balancer))["workers"]
    assert len(workers) == 2 and all(w["up"] for w in workers)
    assert sum(w["requests_total"] for w in workers) == 40


async def test_a_reload_reaches_every_worker_and_a_restarted_one_reads_the_reloaded_file(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([backends[0].url], WORKERS)
    config = balancer.stderr_path.parent / "balancer.yaml"
    config.write_text(
        config.read_text().replace(
            "backends:\n", f"backends:\n  - url: {backends[1].url}\n    name: added\n"
        )
    )
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200
            body = await response.json()
    assert body["reloaded"] is True and body["backends"]["added"] == ["added"]
    assert [w["reloaded"] for w in body["workers"]] == [True, True]
    assert [b["name"] for b in (await status(balancer))["backends"]] == ["added", "b0"]
    old = pids(await status(balancer))
    for pid in old:  # each worker applied it (its own log line)
        assert re.search(
            rf"balancer\.control\[{pid}\]: reloaded .*'added': \['added'\]", balancer.stderr()
        )
    await send(balancer, 20)
    assert backends[1].seen  # the added backend takes traffic
    # A worker that dies comes back on the reloaded file, not the one the supervisor started
    # with: it starts from it (its start-up block lists the added backend).
    os.kill(old[1], signal.SIGKILL)

    async def replaced() -> int | None:
        workers = (await status(balancer))["workers"]
        return int(workers[1]["pid"]) if workers[1]["up"] and workers[1]["pid"] != old[1] else None

    new = await eventually(replaced, timeout=15)
    assert re.search(rf"balancer\[{new}\]: backend added ", balancer.stderr())
    # A bad file: 400 with the problems, from every worker, and nothing changes.
    config.write_text(config.read_text() + "strategy: fastest\n")
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 400
            assert "unknown strategy 'fastest'" in "\n".join((await response.json())["problems"])
    assert [b["name"] for b in (await status(balancer))["backends"]] == ["added", "b0"]


async def test_the_start_block_and_each_reload_are_logged_once_for_the_whole_balancer(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], WORKERS)
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200
    lines = balancer.stderr().splitlines()
    info = [line.split(" INFO ", 1)[1] for line in lines if " INFO " in line]
    starts = [line for line in info if ": balancer " in line and "strategy" in line]
    assert len(starts) == 1 and starts[0].startswith("balancer: "), starts  # the supervisor's
    assert sum("backend b0 http" in line for line in info) == 1
    reloads = [line for line in info if "reloaded" in line]
    assert len(reloads) == 1 and reloads[0].startswith("balancer.supervisor: reloaded"), reloads
    # The workers' own lines are still there, at DEBUG, for whoever wants them.
    assert sum(" DEBUG balancer.control[" in line and "reloaded" in line for line in lines) == 2
