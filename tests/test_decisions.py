"""`GET /decisions` (SPEC §3) through the real command: the last routing decisions of real
requests, newest first, bounded at 1,000, with the pick, the strategy, the sticky pin and
the attempts; a refused request is no decision; with workers, every worker's together."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer


async def decisions(balancer: Balancer, query: str = "") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.get(balancer.admin_url + "/decisions" + query) as response,
    ):
        return response.status, await response.json()


async def test_the_ring_is_newest_first_and_bounded(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    async with aiohttp.ClientSession() as client:
        for i in range(1100):
            async with client.get(f"{balancer.url}/n/{i}?q=1") as response:
                assert response.status == 200
        async with client.get(balancer.url + "/status/503") as response:
            assert response.status == 503
    status, body = await decisions(balancer)
    assert status == 200
    ring = body["decisions"]
    assert len(ring) == 1000  # bounded, however many came
    newest = ring[0]
    assert (newest["method"], newest["path"], newest["status"]) == ("GET", "/status/503", 503)
    assert ring[1]["path"] == "/n/1099?q=1" and ring[-1]["path"] == "/n/101?q=1"
    assert newest["strategy"] == "round_robin" and newest["pick"] in ("b0", "b1")
    assert newest["sticky"] is None and newest["attempts"] == 1
    assert newest["duration_ms"] >= 0 and newest["time"] >= ring[-1]["time"]
    assert {d["pick"] for d in ring} == {"b0", "b1"}
    _, few = await decisions(balancer, "?limit=5")
    assert [d["path"] for d in few["decisions"]] == [d["path"] for d in ring[:5]]


async def test_a_retry_a_sticky_pin_and_a_refused_request(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    dead = "http://127.0.0.1:9"
    extra = "sticky:\n  mode: header\nretries: 1\n"
    balancer = await balancer_factory([dead, backends[0].url], extra)
    async with aiohttp.ClientSession() as client:
        for _ in range(2):
            headers = {"X-Session-Id": "alice"}
            async with client.get(balancer.url + "/s", headers=headers) as response:
                assert response.status == 200
    reader, writer = await asyncio.open_connection(*balancer.host_port)
    writer.write(b"GET /bad HTTP/1.1\r\nHost: a\x01b\r\n\r\n")  # an invalid Host: 400
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    assert b" 400 " in answer.split(b"\r\n", 1)[0], answer
    writer.close()
    await writer.wait_closed()
    _, body = await decisions(balancer)
    ring = body["decisions"]
    assert [d["path"] for d in ring] == ["/s", "/s"]  # the 400 was no routing decision
    second, first = ring
    assert first["pick"] == "b1" and first["sticky"] == {"key": "alice", "backend": None}
    assert second["sticky"] == {"key": "alice", "backend": "b1"} and second["attempts"] == 1
    assert first["attempts"] in (1, 2)  # 2 when round robin tried the dead one first


@pytest.mark.parametrize("query", ["?limit=-1", "?limit=x", "?limit=1001", "?limit=1&limit=2"])
async def test_a_bad_limit_is_a_400(
    backends: list[Backend], balancer_factory: StartBalancer, query: str
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    status, body = await decisions(balancer, query)
    assert status == 400 and "limit" in body["error"]


async def test_with_workers_every_workers_decisions_together(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "workers: 2\n")
    async with aiohttp.ClientSession() as client:
        for i in range(40):  # fresh connections: both workers take some
            headers = {"Connection": "close"}
            async with client.get(f"{balancer.url}/w/{i}", headers=headers) as response:
                assert response.status == 200
    _, body = await decisions(balancer)
    paths = [d["path"] for d in body["decisions"]]
    assert sorted(paths) == sorted(f"/w/{i}" for i in range(40))
    times = [d["time"] for d in body["decisions"]]
    assert times == sorted(times, reverse=True)
