"""The dashboard in a real browser: headless Chromium, driven over the DevTools protocol
(tests/browser.py), against the real `balancer` command with traffic going through it.

The page must show the backends, drain one on a click (a mouse event, as a user's), keep
showing what it had with a "reconnecting" notice when the balancer is gone, ask for the token
when `admin.token` is set (again when it is refused), keep it across a page reload, and
render a hostile backend name as text. No uncaught exception, console error or CSP violation
on the way. Skipped only where no Chromium is installed (`.ci/run` installs Debian's).

`BALANCER_DASHBOARD_PNG=docs/dashboard.png` makes the first test write the README's
screenshot there (otherwise it goes to the test's temporary directory only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from balancer import dashboard

from browser import Chromium, Page, find_chromium
from conftest import StartBalancer
from support import Backend, Balancer, eventually, start_backend

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on the PATH (apt-get install chromium; .ci/run does)"
)

TOKEN = "dashb0ard-t0ken"
# Legal in a config (no space, no '/'), hostile in HTML and in a URL path.
HOSTILE = "<i>x&amp;\"'?#%<"
ROWS = "[...document.querySelectorAll('#backends tbody tr[data-backend]')]"


def row(name: str) -> str:
    """A JavaScript expression for the table row of backend `name`."""
    return f"{ROWS}.find(r => r.dataset.backend === {json.dumps(name)})"


def button(name: str, action: str) -> str:
    return f"{row(name)}?.querySelector('button[data-action={action}]')"


def yaml_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Chromium]:
    assert CHROMIUM is not None
    browser = await Chromium.start(CHROMIUM, tmp_path)
    yield browser
    await browser.stop()


async def start(
    balancer_factory: StartBalancer, backends: list[tuple[str, Backend, int]], extra: str = ""
) -> Balancer:
    text = (
        "listen: 127.0.0.1:0\nlog_level: debug\nstrategy: weighted\n"
        "health_check:\n  interval: 1\n" + extra + "backends:\n"
    )
    for name, backend, weight in backends:
        text += f"  - url: {backend.url}\n    name: {yaml_string(name)}\n    weight: {weight}\n"
    if "admin:" not in extra:
        text += "admin:\n  listen: 127.0.0.1:0\n"
    return await balancer_factory([], config=text)


@contextlib.asynccontextmanager
async def traffic(balancer: Balancer) -> AsyncIterator[None]:
    """Requests through the proxy until the block ends: mostly fine, some slow, a few 500s."""

    async def client(index: int) -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            for n in range(1_000_000):
                path = "/status/500" if n % 23 == index else f"/page/{n}"
                if n % 7 == 0:
                    path = "/slow?delay=0.03"
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(balancer.url + path) as response:
                        await response.read()
                await asyncio.sleep(0.05)

    tasks = [asyncio.ensure_future(client(i)) for i in range(4)]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def admin_status(balancer: Balancer, token: str = "") -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as client,
        client.get(balancer.admin_url + "/status", headers=headers) as response,
    ):
        assert response.status == 200
        body: dict[str, object] = await response.json()
        return body


def state_of(status: dict[str, object], name: str) -> str:
    backends = status["backends"]
    assert isinstance(backends, list)
    return str(next(b["state"] for b in backends if b["name"] == name))


async def shown_names(page: Page) -> list[str]:
    names: list[str] = await page.evaluate(f"{ROWS}.map(r => r.dataset.backend)")
    return names


async def test_the_dashboard_shows_the_backends_and_drains_one_on_a_click(
    balancer_factory: StartBalancer, chromium: Chromium, tmp_path: Path
) -> None:
    apps = [await start_backend(name) for name in ("app1", "app2", "app3")]
    apps[1].set_delay(0.012)
    apps[2].set_delay(0.004)
    try:
        balancer = await start(
            balancer_factory, [("app1", apps[0], 3), ("app2", apps[1], 2), ("app3", apps[2], 1)]
        )
        page = await chromium.page()
        async with traffic(balancer):
            await page.navigate(balancer.admin_url + "/")
            names = ["app1", "app2", "app3"]
            await eventually(lambda: _equal(shown_names(page), names), timeout=15)
            assert await page.evaluate("document.getElementById('strategy').textContent") == (
                "weighted"
            )
            # Everything healthy and routable first (the probes report load: cpu 25 %).
            await eventually(
                lambda: page.evaluate(
                    f"{ROWS}.every(r => r.cells[1].textContent === 'healthy'"
                    " && r.cells[3].textContent === 'yes' && r.cells[7].textContent === '25 %')"
                ),
                timeout=15,
            )
            # The charts: a line per backend and one for the whole balancer, a few points long.
            await _lines(page, points=6)
            assert await page.evaluate(f"{row('app2')}.cells[6].textContent") != "0 %"

            await page.click(button("app2", "drain"))
            await eventually(lambda: _state(balancer, "app2", "draining"), timeout=10, interval=0.1)
            await eventually(
                lambda: page.evaluate(f"{row('app2')}.cells[1].textContent === 'draining'"),
                timeout=10,
            )
            assert await page.evaluate(f"{button('app2', 'drain')}.disabled") is True
            assert await page.evaluate("document.getElementById('action-message').textContent") == (
                "app2: draining"
            )
            await _lines(page, points=10)  # and the drain shows in them
            legend = await page.evaluate("document.getElementById('legend').textContent")
            assert legend == "allapp1app2app3"
            assert await page.evaluate("document.getElementById('notice').hidden") is True
            # /alerts answers: its part shows (the traffic's 5xx may fire error_ratio); sticky
            # is off (/sticky 404): its column stays hidden.
            assert not await page.evaluate("document.getElementById('alerts-section').hidden")
            assert await page.evaluate("document.querySelector('th.sticky-column').hidden")
            png = await page.screenshot()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        _save(png, tmp_path / "dashboard.png", os.environ.get("BALANCER_DASHBOARD_PNG"))

        # The balancer goes away: the page keeps its table and says it is reconnecting.
        await balancer.stop()
        await eventually(
            lambda: page.evaluate(
                "!document.getElementById('notice').hidden"
                " && document.getElementById('notice').textContent.startsWith('reconnecting')"
            ),
            timeout=15,
        )
        assert await shown_names(page) == names
        assert page.problems() == []
    finally:
        for app in apps:
            await app.stop()


async def test_the_dashboard_asks_for_the_token_and_keeps_it_for_the_tab(
    backends: list[Backend], balancer_factory: StartBalancer, chromium: Chromium
) -> None:
    """With workers too: the supervisor serves the page and passes the drain to every worker."""
    admin = f"admin:\n  listen: 127.0.0.1:0\n  token: {TOKEN}\n"
    balancer = await start(
        balancer_factory,
        [("b0", backends[0], 1), (HOSTILE, backends[1], 1)],
        "workers: 2\n" + admin,
    )
    page = await chromium.page()
    await page.navigate(balancer.admin_url + "/")
    form_shown = "!document.getElementById('token-form').hidden"
    await eventually(lambda: page.evaluate(form_shown), timeout=15)
    assert await shown_names(page) == []

    # A wrong token: refused, the form asks again and says so.
    await page.click("document.getElementById('token-input')")
    await page.type_text("wrong")
    await page.click("document.getElementById('token-submit')")
    await eventually(
        lambda: page.evaluate(
            form_shown + " && document.getElementById('token-error').textContent.includes("
            "'refused')"
        ),
        timeout=10,
    )
    await page.click("document.getElementById('token-input')")
    await page.type_text(TOKEN)
    await page.click("document.getElementById('token-submit')")
    await eventually(lambda: _equal(shown_names(page), ["b0", HOSTILE]), timeout=15)
    assert await page.evaluate(form_shown) is False
    # Kept for the tab only, never in the URL.
    assert await page.evaluate("sessionStorage.getItem('balancer.admin.token')") == TOKEN
    assert await page.evaluate("localStorage.length") == 0
    assert await page.evaluate("location.href") == balancer.admin_url + "/"
    # The hostile name is text: in the cell, and no element was made of it.
    assert await page.evaluate(f"{row(HOSTILE)}.cells[0].textContent") == HOSTILE
    assert await page.evaluate("document.querySelectorAll('body i').length") == 0
    await eventually(lambda: page.evaluate("!document.getElementById('workers-item').hidden"))

    await page.click(button(HOSTILE, "drain"))
    await eventually(lambda: _state(balancer, HOSTILE, "draining", TOKEN), timeout=10)
    assert state_of(await admin_status(balancer, TOKEN), "b0") == "healthy"

    # A reload of the page: the tab's token is still there, no question asked.
    await page.reload()
    await eventually(lambda: _equal(shown_names(page), ["b0", HOSTILE]), timeout=15)
    assert await page.evaluate(form_shown) is False
    await eventually(
        lambda: page.evaluate(f"{row(HOSTILE)}.cells[1].textContent === 'draining'"),
        timeout=10,
    )
    await page.click(button(HOSTILE, "enable"))
    await eventually(lambda: _state(balancer, HOSTILE, "healthy", TOKEN), timeout=10)
    assert page.problems() == []


async def test_alerts_and_sticky_counts_show_when_the_api_has_them(chromium: Chromium) -> None:
    """GET /alerts and GET /sticky land later: the page shows what they answer when they
    answer 200 and hides their parts on a 404. A stand-in admin API (the real dashboard
    files, canned answers) plays them, and a /status that fails for a while."""
    answers: dict[str, tuple[int, object]] = {
        "status": (
            200,
            {
                "version": "0.1.0",
                "strategy": "round_robin",
                "uptime_seconds": 5,
                "queued": 0,
                "sticky": {"mode": "cookie", "store": "redis", "available": False},
                "backends": [
                    {
                        "name": "b0",
                        "state": "healthy",
                        "breaker": "open",
                        "routable": False,
                        "breaker_retry_in_seconds": 12.5,
                        "in_flight": 2,
                        "requests_total": 30,
                        "latency_ewma_ms": 4.25,
                        "load": {"cpu": 0.5},
                        "mode": "enabled",
                    },
                    {
                        "name": HOSTILE,
                        "state": "disabled",
                        "breaker": "closed",
                        "routable": False,
                        "in_flight": 0,
                        "requests_total": 10,
                        "latency_ewma_ms": 1.0,
                        "load": {},
                        "mode": "disabled",
                    },
                ],
            },
        ),
        "series": (
            200,
            {
                "interval": 2,
                "times": [100.0, 102.0, 104.0],
                "backends": {
                    "b0": [
                        None,
                        {"rate": 5, "error_ratio": 0.5, "p50_ms": 1, "p95_ms": 2, "p99_ms": 3},
                        {
                            "rate": 6,
                            "error_ratio": 0,
                            "p50_ms": None,
                            "p95_ms": None,
                            "p99_ms": None,
                        },
                    ],
                    "*": [
                        None,
                        None,
                        {"rate": 6, "error_ratio": 0, "p50_ms": 1, "p95_ms": 2, "p99_ms": 3},
                    ],
                },
            },
        ),
        "alerts": (200, {"firing": [{"name": HOSTILE, "backend": "b0", "value": 0.5}, "plain"]}),
        "sticky": (200, {"by_backend": {"b0": 3}}),
    }

    async def canned(request: web.Request) -> web.Response:
        status, body = answers[request.match_info["what"]]
        return web.json_response(body, status=status)

    app = web.Application()
    dashboard.add_routes(app, dict)
    app.router.add_get("/{what:status|series|alerts|sticky}", canned)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        page = await chromium.page()
        await page.navigate(f"http://127.0.0.1:{runner.addresses[0][1]}/")
        await eventually(lambda: _equal(shown_names(page), ["b0", HOSTILE]), timeout=15)
        cells = await page.evaluate(f"[...{row('b0')}.cells].map(c => c.textContent)")
        assert cells[:10] == [
            "b0",
            "healthy",
            "open (13 s)",
            "no",
            "2",
            "4.3 ms",
            "75 %",
            "50 %",
            "\u2013",  # an en dash: nothing reported
            "3",
        ]
        assert await page.evaluate(f"{row(HOSTILE)}.cells[9].textContent") == "0"
        assert await page.evaluate("document.getElementById('sticky').textContent") == (
            "cookie, store redis (UNAVAILABLE)"
        )
        items = await page.evaluate(
            "[...document.querySelectorAll('#alerts li')].map(li => li.textContent)"
        )
        assert items == [f"{HOSTILE} backend: b0, value: 0.5", "plain"]
        assert await page.evaluate("document.querySelectorAll('body i').length") == 0
        assert await page.evaluate("document.querySelectorAll('#charts polyline').length") > 0

        answers["alerts"] = (404, {"error": "Not Found"})
        answers["sticky"] = (404, {"error": "Not Found"})
        await eventually(
            lambda: page.evaluate(
                "document.getElementById('alerts-section').hidden"
                " && document.querySelector('th.sticky-column').hidden"
                f" && {row('b0')}.cells[9].hidden"
            ),
            timeout=10,
        )
        # A worker restarting (503): the notice says why, the table stays.
        answers["status"] = (503, {"error": "no worker answered (restarting?)"})
        await eventually(
            lambda: page.evaluate(
                "document.getElementById('notice').textContent"
                " === 'reconnecting… (no worker answered (restarting?))'"
            ),
            timeout=10,
        )
        assert await shown_names(page) == ["b0", HOSTILE]
        answers["status"] = (200, {"strategy": "p2c", "backends": []})
        await eventually(lambda: page.evaluate("document.getElementById('notice').hidden"))
        assert await shown_names(page) == []
        assert page.problems() == []
    finally:
        await runner.cleanup()


def _save(png: bytes, *paths: Path | str | None) -> None:
    for path in paths:
        if path:
            Path(path).write_bytes(png)


async def _lines(page: Page, points: int) -> None:
    """Until the rate chart has four lines (all, app1-3) at least `points` long."""
    await eventually(
        lambda: page.evaluate(
            "[...document.querySelectorAll('#charts [data-chart=rate] polyline')]"
            f".filter(p => p.points.length >= {points}).length >= 4"
        ),
        timeout=40,
        interval=0.5,
    )


async def _equal(value: object, expected: object) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return value == expected


async def _state(balancer: Balancer, name: str, state: str, token: str = "") -> bool:
    return state_of(await admin_status(balancer, token), name) == state
