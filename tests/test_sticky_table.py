"""`GET /sticky` and the re-pin of a drained backend's sessions (SPEC §3), through the real
command: the in-process table and Redis' (SCAN), counts per backend, keys as given with
cookie values cut, limit and backend filters, hostile queries and bodies, and with workers."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, RedisServer

HEADER = "sticky:\n  mode: header\n"


async def admin(
    balancer: Balancer, method: str, path: str, data: bytes | None = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, balancer.admin_url + path, data=data) as response,
    ):
        return response.status, await response.json(content_type=None)


async def sessions(balancer: Balancer, names: list[str]) -> dict[str, str]:
    """One request per session; where each went."""
    went = {}
    async with aiohttp.ClientSession() as client:
        for name in names:
            async with client.get(balancer.url + "/", headers={"X-Session-Id": name}) as r:
                went[name] = r.headers["X-Backend"]
    return went


async def check_table_and_repin(balancer: Balancer, store: str) -> None:
    names = [f"user-{i}" for i in range(12)]
    went = await sessions(balancer, names)
    status, table = await admin(balancer, "GET", "/sticky")
    assert status == 200 and table["store"] == store and table["total"] == 12
    counts: dict[str, int] = {}
    for backend in went.values():
        counts[backend] = counts.get(backend, 0) + 1
    assert table["by_backend"] == dict(sorted(counts.items()))
    assert {e["key"]: e["backend"] for e in table["entries"]} == went  # keys as given
    assert all(0 < e["expires_in"] <= 1800 for e in table["entries"])
    status, few = await admin(balancer, "GET", "/sticky?limit=3&backend=b0")
    assert status == 200 and len(few["entries"]) == min(3, counts.get("b0", 0))
    assert all(e["backend"] == "b0" for e in few["entries"]) and few["total"] == 12
    # Drain b0 with repin: its sessions move at once, and their next requests follow.
    status, body = await admin(balancer, "POST", "/backends/b0/drain", b'{"repin": true}')
    assert status == 200 and body["state"] == "draining"
    assert body["repinned"] == counts.get("b0", 0)
    _, after = await admin(balancer, "GET", "/sticky")
    assert "b0" not in after["by_backend"] and after["total"] == 12
    moved = {n: b for n, b in (await sessions(balancer, names)).items()}
    assert "b0" not in moved.values()
    for name, backend in went.items():
        if backend != "b0":
            assert moved[name] == backend  # the others keep their pins


async def test_the_in_process_table_and_a_repin(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], HEADER)
    await check_table_and_repin(balancer, "memory")


@pytest.mark.parametrize("workers", ["", "workers: 2\n"], ids=["one process", "workers"])
async def test_the_redis_table_and_a_repin(
    backends: list[Backend],
    balancer_factory: StartBalancer,
    redis_server: RedisServer,
    workers: str,
) -> None:
    extra = workers + HEADER + f"redis:\n  url: {redis_server.url}\n"
    balancer = await balancer_factory([b.url for b in backends], extra)
    await check_table_and_repin(balancer, "redis")


async def test_cookie_values_are_cut_to_8_characters(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], "sticky:\n  mode: cookie\n")
    async with aiohttp.ClientSession() as client:
        async with client.get(balancer.url + "/") as response:
            cookie = response.cookies["lb_session"].value
    _, table = await admin(balancer, "GET", "/sticky")
    assert table["total"] == 1 and len(cookie) > 8
    assert table["entries"][0]["key"] == cookie[:8]
    assert cookie not in str(table)


async def test_hostile_queries_and_bodies(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends], HEADER)
    for query in ("limit=-1", "limit=abc", "limit=1001", "limit=1&limit=2", "limit=1e3"):
        status, body = await admin(balancer, "GET", f"/sticky?{query}")
        assert status == 400 and "limit" in body["error"], query
    status, body = await admin(balancer, "GET", "/sticky?backend=nope")
    assert status == 404 and body["backends"] == ["b0", "b1"]
    bad_bodies = [b"{", b"[]", b'{"repin": "yes"}', b'{"repin": true, "more": 1}', b"\xff"]
    for data in bad_bodies:
        status, body = await admin(balancer, "POST", "/backends/b0/drain", data)
        assert status == 400, data
    status, _ = await admin(balancer, "POST", "/backends/b0/disable", b'{"repin": true}')
    assert status == 400
    _, view = await admin(balancer, "GET", "/status")
    assert [b["state"] for b in view["backends"]] == ["healthy", "healthy"]  # nothing changed
    status, body = await admin(balancer, "POST", "/backends/b0/drain", b'{"repin": false}')
    assert status == 200 and "repinned" not in body


async def test_sticky_off_is_a_404(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await balancer_factory([b.url for b in backends])
    status, body = await admin(balancer, "GET", "/sticky")
    assert status == 404 and "sticky" in body["error"]
