"""`admin.token` (SPEC §3) through the real command, one process and two workers: every admin
call but the health probes (and the dashboard's own files) needs `Authorization: Bearer
<token>`; a missing, wrong, forged or repeated one is a 401 JSON; a reload sets, changes or
clears it at once; the Origin check still comes first."""

from __future__ import annotations

import aiohttp
import pytest

from conftest import StartBalancer
from support import Backend, Balancer, eventually

TOKEN = "s3cret-t0ken"
ONE_PROCESS, TWO_WORKERS = "", "workers: 2\n"
# Every admin call there is, with a body where it needs one.
CALLS = [
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("GET", "/series"),
    ("GET", "/alerts"),
    ("POST", "/backends/b0/drain"),
    ("POST", "/backends/b0/enable"),
    ("POST", "/backends/nope/drain"),  # 401, not 404: nothing is said without the token
    ("GET", "/backends/b0/drain"),  # 401, not 405
    ("POST", "/reload"),
    ("GET", "/no-such-call"),
]


def with_token(extra: str, token: str = TOKEN) -> str:
    return extra + f"admin:\n  listen: 127.0.0.1:0\n  token: {token}\n"


async def call(
    balancer: Balancer, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object], aiohttp.typedefs.LooseHeaders]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, balancer.admin_url + path, headers=headers) as response,
    ):
        body = await response.json(content_type=None)
        return response.status, body, response.headers


async def start(balancer_factory: StartBalancer, backends: list[Backend], extra: str) -> Balancer:
    # The config's own `admin:` section replaces the default one of config_yaml.
    text = "listen: 127.0.0.1:0\nlog_level: debug\n" + extra + "backends:\n"
    text += "".join(f"  - url: {b.url}\n    name: b{i}\n" for i, b in enumerate(backends))
    return await balancer_factory([], config=text)


@pytest.mark.parametrize("workers", [ONE_PROCESS, TWO_WORKERS], ids=["one process", "workers"])
async def test_every_admin_call_needs_the_token(
    backends: list[Backend], balancer_factory: StartBalancer, workers: str
) -> None:
    balancer = await start(balancer_factory, backends, with_token(workers))
    forged = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": "Bearer " + "A" * 6000},  # oversized: a 401 too, never a 500
        {"Authorization": "Bearer \u00e9\u00e9"},
        {"X-Admin-Token": TOKEN},
    ]
    for method, path in CALLS:
        for headers in forged:
            status, body, answer = await call(balancer, method, path, headers)
            assert status == 401, (method, path, headers, status, body)
            assert "Bearer" in str(body["error"]) and TOKEN not in str(body)
            assert answer["WWW-Authenticate"].startswith("Bearer")
    # Two Authorization fields, one of them right: refused (which one would count?).
    async with aiohttp.ClientSession() as client:
        pairs = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")]
        async with client.get(balancer.admin_url + "/status", headers=pairs) as response:
            assert response.status == 401
    # The probes need none; the right token opens everything, the scheme in any case.
    for path in ("/health/live", "/health/ready"):
        assert (await call(balancer, "GET", path))[0] == 200
    for scheme in ("Bearer", "bearer", "BEARER"):
        good = {"Authorization": f"{scheme} {TOKEN}"}
        assert (await call(balancer, "GET", "/status", good))[0] == 200
    assert (await call(balancer, "POST", "/backends/b0/drain", good))[0] == 200
    status, body, _ = await call(balancer, "GET", "/status", good)
    assert [b["state"] for b in body["backends"]] == ["draining", "healthy"]  # type: ignore[index]
    assert (await call(balancer, "POST", "/backends/nope/drain", good))[0] == 404


@pytest.mark.parametrize("workers", [ONE_PROCESS, TWO_WORKERS], ids=["one process", "workers"])
async def test_a_reload_sets_changes_and_clears_the_token_at_once(
    backends: list[Backend], balancer_factory: StartBalancer, workers: str
) -> None:
    balancer = await start(balancer_factory, backends, with_token(workers, "''"))
    config = balancer.stderr_path.parent / "balancer.yaml"
    assert (await call(balancer, "GET", "/status"))[0] == 200  # no token set: open
    original = config.read_text()
    config.write_text(original.replace("token: ''", f"token: {TOKEN}"))
    assert (await call(balancer, "POST", "/reload"))[0] == 200
    assert (await call(balancer, "GET", "/status"))[0] == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    config.write_text(original.replace("token: ''", "token: another"))
    assert (await call(balancer, "POST", "/reload", good))[0] == 200
    assert (await call(balancer, "GET", "/status", good))[0] == 401  # the old one is gone
    other = {"Authorization": "Bearer another"}
    assert (await call(balancer, "GET", "/status", other))[0] == 200
    config.write_text(original)
    assert (await call(balancer, "POST", "/reload", other))[0] == 200
    await eventually(lambda: call_ok(balancer))


async def call_ok(balancer: Balancer) -> bool:
    return (await call(balancer, "GET", "/status"))[0] == 200


async def test_the_origin_check_comes_before_the_token(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await start(balancer_factory, backends, with_token(ONE_PROCESS))
    evil = {"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"}
    status, body, _ = await call(balancer, "POST", "/backends/b0/drain", evil)
    assert status == 403 and "cross-origin" in str(body["error"])
    status, _, _ = await call(balancer, "POST", "/backends/b0/drain", {"Origin": "null"})
    assert status == 403
    refused = [line for line in balancer.stderr().splitlines() if "without the right token" in line]
    assert len(refused) <= 1  # a flood of bad tokens is logged once a minute, not per call
