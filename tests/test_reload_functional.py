"""Live reload through the real command (SPEC §6): SIGHUP and POST /reload, a bad file or a
restart-only change refused whole while the old config serves, backends that stay keep their
state, removed ones drain, strategy and weights change live, and no request fails."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from conftest import StartBalancer
from support import Backend, Balancer, config_yaml, eventually, json_get


def config_file(balancer: Balancer) -> Path:
    return balancer.stderr_path.parent / "balancer.yaml"


def write(balancer: Balancer, backends: list[tuple[str, str, int]], extra: str = "") -> None:
    """The balancer's file, as `listen: 127.0.0.1:0` with these (name, url, weight)."""
    lines = "".join(
        f"  - url: {url}\n    name: {name}\n    weight: {w}\n" for name, url, w in backends
    )
    config_file(balancer).write_text(
        "listen: 127.0.0.1:0\nlog_level: debug\nadmin:\n  listen: 127.0.0.1:0\n"
        f"backends:\n{lines}{extra}"
    )


async def reload(session: aiohttp.ClientSession, balancer: Balancer) -> tuple[int, Any]:
    async with session.post(balancer.admin_url + "/reload") as response:
        return response.status, await response.json()


async def status(session: aiohttp.ClientSession, balancer: Balancer) -> Any:
    return await json_get(session, balancer.admin_url + "/status")


async def served_by(session: aiohttp.ClientSession, balancer: Balancer, n: int) -> list[str]:
    names = []
    for _ in range(n):
        async with session.get(balancer.url + "/") as response:
            assert response.status == 200
            names.append(response.headers["X-Backend"])
    return names


async def test_sighup_adds_a_backend_and_the_one_that_stays_keeps_its_stats(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([backends[0].url])
    assert set(await served_by(session, balancer, 4)) == {"b0"}
    write(balancer, [("b0", backends[0].url, 1), ("b1", backends[1].url, 1)])
    balancer.process.send_signal(signal.SIGHUP)

    async def two() -> bool:
        return len((await status(session, balancer))["backends"]) == 2

    await eventually(two)
    assert set(await served_by(session, balancer, 4)) == {"b0", "b1"}
    b0 = (await status(session, balancer))["backends"][0]
    assert b0["name"] == "b0" and b0["requests_total"] == 6  # 4 before, 2 after: kept
    assert "reloaded" in balancer.stderr()


async def test_post_reload_answers_a_summary_once_the_new_config_serves(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    write(balancer, [("b1", backends[1].url, 1)], "strategy: least_connections\n")
    code, body = await reload(session, balancer)
    assert code == 200
    assert body == {"reloaded": True, "backends": {"added": [], "kept": ["b1"], "removed": ["b0"]}}
    state = await status(session, balancer)
    assert state["strategy"] == "least_connections"
    assert [b["name"] for b in state["backends"]] == ["b1"]
    assert set(await served_by(session, balancer, 4)) == {"b1"}


async def test_a_bad_file_is_refused_whole_with_every_problem_and_the_old_config_serves(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    config_file(balancer).write_text(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstrategy: fastest\n"
        "backends:\n  - url: ftp://x\n  - url: http://127.0.0.1:1\n    wieght: 2\n"
    )
    code, body = await reload(session, balancer)
    assert code == 400 and body["reloaded"] is False
    problems = "\n".join(body["problems"])
    assert ":4: strategy: unknown strategy 'fastest'" in problems
    assert ":6: backends[0].url:" in problems
    assert ":8: backends[1]: unknown key 'wieght'" in problems
    assert set(await served_by(session, balancer, 4)) == {"b0", "b1"}
    assert (await status(session, balancer))["strategy"] == "round_robin"
    # SIGHUP with the same bad file: logged with every problem, nothing changes.
    balancer.process.send_signal(signal.SIGHUP)
    await eventually(lambda: balancer.stderr().count("reload refused") == 2)
    assert set(await served_by(session, balancer, 4)) == {"b0", "b1"}


async def test_a_change_that_needs_a_restart_is_refused_naming_each_key(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    text = config_yaml([b.url for b in backends])
    text = text.replace("listen: 127.0.0.1:0\nlog", "listen: 127.0.0.1:18080\nlog")
    config_file(balancer).write_text(text + "workers: 1\nstrategy: least_connections\n")
    code, body = await reload(session, balancer)
    assert code == 400
    assert any("listen: needs a restart" in p for p in body["problems"])
    assert (await status(session, balancer))["strategy"] == "round_robin"  # nothing applied


async def test_a_removed_backend_finishes_its_requests_then_goes(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([backends[1].url])  # named b0 in the file
    slow = asyncio.ensure_future(session.get(balancer.url + "/slow?delay=1.5"))
    await eventually(lambda: len(backends[1].seen) == 1)
    write(balancer, [("other", backends[0].url, 1)])
    code, _ = await reload(session, balancer)
    assert code == 200
    names = [b["name"] for b in (await status(session, balancer))["backends"]]
    assert names == ["other", "b0"]  # b0 retiring, its request still in flight
    assert set(await served_by(session, balancer, 3)) == {"b0"}  # the app at backends[0]
    response = await slow
    assert response.status == 200 and await response.text() == "slow b1\n"

    async def gone() -> bool:
        return [b["name"] for b in (await status(session, balancer))["backends"]] == ["other"]

    await eventually(gone)
    assert "backend b0 retired" in balancer.stderr()


async def test_a_reload_to_consistent_hash_extracts_the_key_and_a_reweight_moves_the_ring(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    hashing = "strategy: consistent_hash\nhash: {on: header, name: X-User}\n"
    write(balancer, [("b0", backends[0].url, 1), ("b1", backends[1].url, 1)], hashing)
    assert (await reload(session, balancer))[0] == 200

    async def owners() -> dict[str, str]:
        found = {}
        for user in range(40):
            async with session.get(balancer.url + "/", headers={"X-User": f"u{user}"}) as r:
                found[f"u{user}"] = r.headers["X-Backend"]
        return found

    first = await owners()
    assert first == await owners()  # the key is extracted: each user keeps its backend
    assert set(first.values()) == {"b0", "b1"}
    write(balancer, [("b0", backends[0].url, 1), ("b1", backends[1].url, 20)], hashing)
    assert (await reload(session, balancer))[0] == 200
    after = await owners()
    counts = collections.Counter(after.values())
    assert counts["b1"] > counts["b0"] and counts["b1"] > collections.Counter(first.values())["b1"]


async def test_no_request_fails_across_reloads_under_load(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    third = await _third_backend()
    try:
        balancer = await balancer_factory([backends[0].url, backends[1].url])
        urls = {"b0": backends[0].url, "b1": backends[1].url, "b2": third.url}
        plans = [
            [("b0", urls["b0"], 1), ("b1", urls["b1"], 1), ("b2", urls["b2"], 1)],
            [("b0", urls["b0"], 3), ("b2", urls["b2"], 1)],
            [("b1", urls["b1"], 1), ("b2", urls["b2"], 2)],
            [("b0", urls["b0"], 1), ("b1", urls["b1"], 1)],
        ]
        strategies = ["least_connections", "weighted", "p2c", "round_robin", "response_time"]
        results: collections.Counter[str] = collections.Counter()
        failures: list[str] = []
        stop = asyncio.Event()

        async def client(keep_alive: bool, index: int) -> None:
            connector = aiohttp.TCPConnector(force_close=not keep_alive)
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:
                while not stop.is_set():
                    path = "/slow?delay=0.3" if index % 5 == 0 else f"/c{index}"
                    try:
                        async with s.get(balancer.url + path) as response:
                            body = await response.read()
                            if response.status != 200 or not body:
                                failures.append(f"{path}: {response.status}")
                            results[response.headers.get("X-Backend", "?")] += 1
                    except aiohttp.ClientError as exc:
                        failures.append(f"{path}: {exc!r}")

        clients = [
            asyncio.ensure_future(client(keep_alive=i % 2 == 0, index=i)) for i in range(120)
        ]
        async with aiohttp.ClientSession() as admin:
            await eventually(lambda: sum(results.values()) > 200, timeout=10)
            started = time.monotonic()
            for round_ in range(10):
                write(
                    balancer,
                    plans[round_ % len(plans)],
                    f"strategy: {strategies[round_ % len(strategies)]}\n",
                )
                before = sum(results.values())
                if round_ % 2:
                    balancer.process.send_signal(signal.SIGHUP)
                    await asyncio.sleep(0.05)  # the reload is applied on the balancer's loop
                else:
                    code, body = await reload(admin, balancer)
                    assert code == 200, body
                await eventually(lambda n=before: sum(results.values()) > n + 50, timeout=10)
            elapsed = time.monotonic() - started

            async def all_applied() -> bool:
                return bool((await status(admin, balancer))["reloads"] == {"ok": 10, "failed": 0})

            await eventually(all_applied)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == [], failures[:10]
        assert sum(results.values()) > 1000
        assert set(results) <= {"b0", "b1", "b2"}
        assert elapsed < 60
    finally:
        await third.stop()


async def _third_backend() -> Backend:
    from support import start_backend

    return await start_backend("b2")


async def test_breaker_and_health_state_survive_a_reload_and_new_checks_apply_live(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    extra = "circuit_breaker: {failure_threshold: 2, reset_timeout: 1h}\nhealth_check: {interval: 200ms}\n"
    balancer = await balancer_factory([b.url for b in backends], extra)
    for _ in range(4):
        async with session.get(balancer.url + "/status/503") as response:
            assert response.status == 503
    opened = {b["name"]: b["breaker"] for b in (await status(session, balancer))["backends"]}
    assert "open" in opened.values()
    # A reload that re-weights: the open breaker stays open, its counts stay.
    write(balancer, [("b0", backends[0].url, 2), ("b1", backends[1].url, 2)], extra)
    assert (await reload(session, balancer))[0] == 200
    after = {b["name"]: b["breaker"] for b in (await status(session, balancer))["backends"]}
    assert after == opened
    # New health-check settings act at once: a path that answers 404 marks both unhealthy.
    write(
        balancer,
        [("b0", backends[0].url, 2), ("b1", backends[1].url, 2)],
        "health_check: {interval: 200ms, path: /status/404, fall: 1}\n",
    )
    assert (await reload(session, balancer))[0] == 200

    async def unhealthy() -> bool:
        states = [b["state"] for b in (await status(session, balancer))["backends"]]
        return states == ["unhealthy", "unhealthy"]

    await eventually(unhealthy, timeout=5)


async def test_watch_reloads_when_the_file_changes_and_keeps_serving_on_a_bad_edit(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    balancer = await balancer_factory([backends[0].url], "watch: true\n")
    await eventually(lambda: "watching" in balancer.stderr())
    write(balancer, [("b0", backends[0].url, 1), ("b1", backends[1].url, 1)], "watch: true\n")

    async def names() -> list[str]:
        return [b["name"] for b in (await status(session, balancer))["backends"]]

    await eventually(lambda: names_are(names, ["b0", "b1"]), timeout=10)
    # Saved by renaming a new file over the old one, as many editors do.
    replacement = config_file(balancer).with_suffix(".new")
    replacement.write_text(config_file(balancer).read_text() + "strategy: fastest\n")
    replacement.replace(config_file(balancer))
    await eventually(lambda: "reload refused" in balancer.stderr(), timeout=10)
    assert await names() == ["b0", "b1"]
    assert set(await served_by(session, balancer, 4)) == {"b0", "b1"}


async def names_are(names: Any, expected: list[str]) -> bool:
    return bool(await names() == expected)


async def test_a_request_that_spans_a_reload_retries_on_the_pool_it_started_with(
    backends: list[Backend], balancer_factory: StartBalancer, session: aiohttp.ClientSession
) -> None:
    """The first pick (round robin starts at the first backend) goes to one that takes the
    request, waits, and drops it; meanwhile a reload reorders the pool and adds a backend.
    The retry is the old Runtime's: it goes to the old pool's other backend, never the new."""
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def drop_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.transport.abort()

    dropper = await asyncio.start_server(drop_later, "127.0.0.1", 0)
    drop_url = f"http://127.0.0.1:{dropper.sockets[0].getsockname()[1]}"
    try:
        balancer = await balancer_factory(
            [drop_url, backends[0].url], "health_check: {interval: 1h}\n"
        )
        request = asyncio.ensure_future(session.get(balancer.url + "/spanning"))
        await asyncio.wait_for(arrived.wait(), 5)
        write(
            balancer, [("b0", drop_url, 1), ("two", backends[1].url, 1), ("b1", backends[0].url, 1)]
        )
        assert (await reload(session, balancer))[0] == 200
        release.set()
        response = await request
        assert response.status == 200
        assert response.headers["X-Backend"] == "b0"  # backends[0]: the old pool's b1
        assert [s.path for s in backends[1].seen] == []  # the new pool's `two`: never
    finally:
        release.set()
        dropper.close()
        await dropper.wait_closed()
