"""Alerts through the real command (SPEC §2 `alerts`, §3 GET /alerts, §6): a backend made
unhealthy fires backend_down once (one webhook POST, one log line, /alerts, the metric) and
resolves once; a webhook that hangs, fails, redirects or answers a huge body never delays a
request and the engine keeps evaluating; 500s fire error_ratio; with workers the supervisor
alone judges; a reload that turns a rule off resolves its alert; `enabled: false` judges
nothing."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conftest import StartBalancer
from support import Backend, Balancer, balancer_command, config_yaml, eventually, fresh_get

# Probes every 100 ms, one failure or pass decides: a backend turns within ~0.2 s.
FAST_CHECKS = "health_check:\n  interval: 100ms\n  timeout: 1s\n  rise: 1\n  fall: 1\n"


@dataclass
class Receiver:
    """A webhook receiver on port 0: records each POST's JSON; `answer` says how it answers
    (ok, hang, 500, redirect, huge)."""

    url: str
    runner: web.AppRunner
    answer: str = "ok"
    posts: list[dict[str, Any]] = field(default_factory=list)
    arrived: int = 0  # POSTs that arrived, answered or not
    redirected: int = 0  # requests to where the redirect points
    written: int = 0  # bytes of the huge bodies written before the client went
    cut: int = 0  # huge bodies the client cut short
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, status: str, rule: str | None = None) -> list[dict[str, Any]]:
        return [
            p for p in self.posts if p["status"] == status and (rule is None or p["rule"] == rule)
        ]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver: Receiver

    async def hook(request: web.Request) -> web.StreamResponse:
        receiver.arrived += 1
        body = await request.json()
        if receiver.answer == "hang":
            await receiver.release.wait()
        receiver.posts.append(body)
        if receiver.answer == "500":
            return web.Response(status=500, text="no")
        if receiver.answer == "redirect":
            raise web.HTTPFound("/elsewhere")
        if receiver.answer == "huge":
            response = web.StreamResponse()
            await response.prepare(request)
            chunk = b"x" * 65536
            try:
                for _ in range(16384):  # 1 GiB, if anyone read it
                    await response.write(chunk)
                    receiver.written += len(chunk)
            except (ConnectionError, RuntimeError):
                receiver.cut += 1
            return response
        return web.json_response({"ok": True})

    async def elsewhere(request: web.Request) -> web.Response:
        receiver.redirected += 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_route("*", "/elsewhere", elsewhere)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver = Receiver(f"http://127.0.0.1:{port}/hook", runner)
    yield receiver
    receiver.release.set()
    await runner.cleanup()


def alerts_section(receiver: Receiver | None, rules: str = "", extra: str = "") -> str:
    text = "alerts:\n  interval: 200ms\n"
    if receiver is not None:
        text += f"  webhook: {receiver.url}\n"
    if rules:
        text += "  rules:\n" + "".join(f"    {line}\n" for line in rules.splitlines())
    return text + extra


async def get_json(url: str) -> Any:
    code, text = await fresh_get(url)
    assert code == 200, text
    return json.loads(text)


async def alerts(balancer: Balancer) -> Any:
    return await get_json(balancer.admin_url + "/alerts")


def firing(answer: Any, rule: str) -> list[dict[str, Any]]:
    return [alert for alert in answer["firing"] if alert["rule"] == rule]


def log_lines(balancer: Balancer, pattern: str) -> list[str]:
    return [line for line in balancer.stderr().splitlines() if re.search(pattern, line)]


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def evaluations_pass(backend: Backend, probes: int = 10) -> None:
    """Let several probe intervals (100 ms) pass, so several evaluations (200 ms) did too."""
    seen = backend.probes
    await eventually(lambda: backend.probes >= seen + probes, timeout=10)


FIRING_METRIC = 'balancer_alert_firing{backend="b1",rule="backend_down",severity="critical"} 1.0'


@pytest.mark.parametrize("workers", ["", "workers: 2\n"], ids=["one process", "two workers"])
async def test_backend_down_fires_once_and_resolves_once(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver, workers: str
) -> None:
    balancer = await balancer_factory(
        [b.url for b in backends], workers + FAST_CHECKS + alerts_section(receiver)
    )
    assert (await alerts(balancer)) == {"firing": [], "recent": [], "enabled": True}
    started = time.time()
    backends[1].set_healthy(False)
    [alert] = await eventually(lambda: _firing_now(balancer, "backend_down"), timeout=10)
    assert alert["backend"] == "b1" and alert["severity"] == "critical"
    assert alert["value"] == 0 and started - 1 <= alert["since"] <= time.time()
    await eventually(lambda: receiver.of("firing"), timeout=10)
    code, metrics = await fresh_get(balancer.admin_url + "/metrics")
    assert code == 200
    assert FIRING_METRIC in metrics.splitlines(), metrics
    assert sum(1 for line in metrics.splitlines() if line.startswith("balancer_alert_firing{")) == 1
    promtool_check(metrics)

    await evaluations_pass(backends[1])  # still firing: no reminder, no second alert
    assert len(receiver.posts) == 1
    [post] = receiver.posts
    assert post == {"status": "firing", **alert, "value": 0, "since": alert["since"]}
    assert len(firing(await alerts(balancer), "backend_down")) == 1

    backends[1].set_healthy(True)
    await eventually(lambda: receiver.of("resolved"), timeout=10)
    answer = await alerts(balancer)
    assert answer["firing"] == []
    [recent] = answer["recent"]
    assert recent["rule"] == "backend_down" and recent["backend"] == "b1"
    assert recent["since"] == alert["since"] <= recent["resolved"]
    await evaluations_pass(backends[1])
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    assert receiver.posts[1]["since"] == alert["since"]
    _, metrics = await fresh_get(balancer.admin_url + "/metrics")
    assert "balancer_alert_firing{" not in metrics
    # Logged once at each change, by one process (the supervisor with workers).
    assert len(log_lines(balancer, r"alert firing: backend_down \(critical\) on b1")) == 1
    assert len(log_lines(balancer, r"alert resolved: backend_down \(critical\) on b1")) == 1
    assert not log_lines(balancer, r"balancer\.alerts\[")  # no worker judges


async def _firing_now(balancer: Balancer, rule: str) -> list[dict[str, Any]]:
    return firing(await alerts(balancer), rule)


@pytest.mark.parametrize("answer", ["hang", "500"])
async def test_a_webhook_that_hangs_or_fails_never_delays_requests(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver, answer: str
) -> None:
    receiver.answer = answer
    balancer = await balancer_factory(
        [b.url for b in backends],
        FAST_CHECKS + alerts_section(receiver, extra="  cooldown: {critical: 0s}\n"),
    )
    backends[1].set_healthy(False)
    await eventually(lambda: receiver.arrived >= 1, timeout=10)  # the POST is out (hanging)
    first_arrival = time.monotonic()
    async with aiohttp.ClientSession() as client:
        for _ in range(20):
            began = time.monotonic()
            async with client.get(balancer.url + "/") as response:
                assert response.status == 200
                await response.read()
            assert time.monotonic() - began < 1.0  # the webhook's 5 s would show here
    # The engine keeps evaluating meanwhile: the backend's return resolves the alert, and
    # its next fall fires again.
    backends[1].set_healthy(True)
    await eventually(lambda: _resolved(balancer, "backend_down", 1), timeout=10)
    backends[1].set_healthy(False)
    await eventually(lambda: _firing_now(balancer, "backend_down"), timeout=10)
    if answer == "500":
        await eventually(lambda: receiver.arrived >= 3, timeout=10)
        warned = log_lines(balancer, r"webhook http://127\.0\.0\.1:\d+/\.\.\.: answered 500")
        assert len(warned) == 1  # once per run of failures
        assert "/hook" not in balancer.stderr()  # the URL's path is never logged
    else:  # one POST at a time: the next waits for the first's 5 s timeout
        assert receiver.arrived == 1 or time.monotonic() - first_arrival >= 5
        receiver.release.set()


async def _resolved(balancer: Balancer, rule: str, count: int) -> bool:
    recent = (await alerts(balancer))["recent"]
    return sum(1 for alert in recent if alert["rule"] == rule) >= count


async def test_error_ratio_fires_from_500s(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver
) -> None:
    rules = "error_ratio: {above: 0.5, over: 4s}\nbreaker_open: off"
    extra = "circuit_breaker:\n  failure_threshold: 1000\nretries: 0\n"
    balancer = await balancer_factory([backends[0].url], extra + alerts_section(receiver, rules))
    async with aiohttp.ClientSession() as client:
        for _ in range(6):
            async with client.get(balancer.url + "/status/500") as response:
                assert response.status == 500
        async with client.get(balancer.url + "/") as response:
            assert response.status == 200
    [alert] = await eventually(lambda: _firing_now(balancer, "error_ratio"), timeout=15)
    assert alert["backend"] == "b0" and alert["severity"] == "high"
    assert 0.5 < alert["value"] <= 1.0
    [post] = await eventually(lambda: receiver.of("firing", "error_ratio"), timeout=10)
    assert post["backend"] == "b0"
    # No traffic since: once the 4 s window slides past the 500s, it resolves.
    await eventually(lambda: receiver.of("resolved", "error_ratio"), timeout=20)
    assert len(receiver.of("firing", "error_ratio")) == 1


async def test_a_reload_that_turns_a_rule_off_resolves_its_alert(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver
) -> None:
    section = FAST_CHECKS + alerts_section(receiver)
    balancer = await balancer_factory([b.url for b in backends], section)
    backends[1].set_healthy(False)
    await eventually(lambda: receiver.of("firing", "backend_down"), timeout=10)
    path = balancer.stderr_path.parent / "balancer.yaml"
    text = path.read_text()
    assert "  interval: 200ms\n" in text
    path.write_text(text + "  rules:\n    backend_down: off\n")
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200, await response.text()
    await eventually(lambda: receiver.of("resolved", "backend_down"), timeout=10)
    answer = await alerts(balancer)
    assert answer["firing"] == [] and answer["recent"][0]["rule"] == "backend_down"
    await evaluations_pass(backends[1])  # still unhealthy, but the rule is gone
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]


async def test_disabled_alerts_judge_nothing_until_a_reload_enables_them(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver
) -> None:
    section = FAST_CHECKS + alerts_section(receiver, extra="  enabled: false\n")
    balancer = await balancer_factory([b.url for b in backends], section)
    backends[1].set_healthy(False)
    await evaluations_pass(backends[1])
    assert (await alerts(balancer)) == {"firing": [], "recent": [], "enabled": False}
    assert receiver.arrived == 0 and not log_lines(balancer, "alert firing")
    path = balancer.stderr_path.parent / "balancer.yaml"
    path.write_text(path.read_text().replace("enabled: false", "enabled: true"))
    async with aiohttp.ClientSession() as client:
        async with client.post(balancer.admin_url + "/reload") as response:
            assert response.status == 200, await response.text()
    [alert] = await eventually(lambda: _firing_now(balancer, "backend_down"), timeout=10)
    assert alert["backend"] == "b1"


@pytest.mark.parametrize("answer", ["redirect", "huge"])
async def test_a_webhook_that_redirects_or_answers_a_huge_body(
    backends: list[Backend], balancer_factory: StartBalancer, receiver: Receiver, answer: str
) -> None:
    receiver.answer = answer
    balancer = await balancer_factory(
        [b.url for b in backends], FAST_CHECKS + alerts_section(receiver)
    )
    backends[1].set_healthy(False)
    await eventually(lambda: receiver.of("firing"), timeout=10)
    backends[1].set_healthy(True)
    await eventually(lambda: receiver.of("resolved"), timeout=10)
    assert [p["status"] for p in receiver.posts] == ["firing", "resolved"]
    if answer == "redirect":
        assert receiver.redirected == 0  # never followed
        failed = log_lines(balancer, r"answered 302 \(redirects are not followed\)")
        assert len(failed) == 1  # once per run of failures
    else:
        # Nothing of the body is read: the connection goes as soon as the head is in, so
        # the receiver could write no more than what the sockets' buffers take.
        await eventually(lambda: receiver.cut == 2)  # both POSTs' answers cut short
        assert receiver.written < 64 << 20
        assert not log_lines(balancer, r"balancer\.alerts: webhook")  # a 200: delivered


async def test_tiny_interval_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "balancer.yaml"
    path.write_text(config_yaml(["http://127.0.0.1:9"], "alerts:\n  interval: 10ms\n"))
    process = await asyncio.create_subprocess_exec(
        *balancer_command(),
        "--check",
        "-c",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 2, out
    assert "alerts.interval: must be at least 100ms" in err.decode()
