"""The dashboard's files on the admin port (SPEC §3), through the real command and the
supervisor's app: `GET /` is the page (the JSON index for a client that asks for JSON), the
script and style sheet at `/dashboard/<file>` with their types, no-cache and a CSP of 'self'
only; anything else there is a JSON 404, `..` in any spelling included; with `admin.token`
the files are open and the data is not. The browser's side: test_dashboard_browser.py."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp

from balancer import dashboard
from balancer.config import parse_config
from balancer.supervisor_admin import WorkerAdmin, make_supervisor_app

from conftest import StartBalancer
from support import Backend, Balancer, raw_exchange

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken-for-the-dashboard"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
TYPES = {
    "/": "text/html",
    "/dashboard/index.html": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/style.css": "text/css",
}
TRAVERSALS = [
    "/dashboard/../admin.py",
    "/dashboard/%2e%2e/admin.py",
    "/dashboard/%2E%2E/%2E%2E/etc/passwd",
    "/dashboard/..%2fadmin.py",
    "/dashboard/%2e%2e%2f%2e%2e%2fbalancer%2fadmin.py",
    "/dashboard/..%5cadmin.py",
    "/dashboard/./app.js",
    "/dashboard//app.js",
    "/dashboard/",
    "/dashboard/__init__.py",
    "/dashboard/app.js%00.css",
]


def file_of(path: str) -> bytes:
    return dashboard.assets()["index.html" if path == "/" else path.removeprefix("/dashboard/")][0]


def check_headers(headers: Any, kind: str) -> None:
    assert headers["Content-Type"] == f"{kind}; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe" not in csp and "http" not in csp and "*" not in csp and "data:" not in csp
    assert "Server" not in headers


async def get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as client,
        client.request(method, url, headers=headers) as response,
    ):
        return response.status, response.headers, await response.read()


async def with_token(backends: list[Backend], balancer_factory: StartBalancer) -> Balancer:
    text = f"listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token: {TOKEN}\nbackends:\n"
    text += f"  - url: {backends[0].url}\n    name: b0\n"
    return await balancer_factory([], config=text)


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] in ("script", "style"):
            self.script_text += data.strip()


async def test_the_root_is_the_page_and_its_files_are_served_with_their_types(
    balancer: Balancer,
) -> None:
    for path, kind in TYPES.items():
        for accept in (None, BROWSER_ACCEPT, "*/*"):
            headers = {"Accept": accept} if accept else None
            status, answer, body = await get(balancer.admin_url + path, headers)
            assert status == 200, (path, accept)
            check_headers(answer, kind)
            assert body == file_of(path)
            # HEAD: the same head, no body.
            status, head, body = await get(balancer.admin_url + path, headers, method="HEAD")
            assert status == 200 and body == b"" and head["Content-Type"] == answer["Content-Type"]
    status, answer, _ = await get(balancer.admin_url + "/")
    assert "Accept" in answer["Vary"]
    # Revalidation (no-cache): the same ETag is a 304.
    status, answer, _ = await get(balancer.admin_url + "/dashboard/app.js")
    status, _, body = await get(
        balancer.admin_url + "/dashboard/app.js", {"If-None-Match": answer["ETag"]}
    )
    assert status == 304 and body == b""
    status, _, body = await get(
        balancer.admin_url + "/dashboard/app.js", {"If-None-Match": '"other"'}
    )
    assert status == 200 and body


async def test_a_client_that_asks_for_json_still_gets_the_index(balancer: Balancer) -> None:
    for accept in (
        "application/json",
        "application/json, */*;q=0.5",
        "text/html;q=0, application/json",
    ):
        status, answer, body = await get(balancer.admin_url + "/", {"Accept": accept})
        assert status == 200, accept
        assert answer["Content-Type"].startswith("application/json")
        paths = {e["path"] for e in json.loads(body)["endpoints"]}
        assert {"/", "/status", "/series", "/dashboard/{file}"} <= paths
    for accept in ("application/json, text/html", "application/json;q=0, text/html", "text/plain"):
        status, answer, _ = await get(balancer.admin_url + "/", {"Accept": accept})
        assert answer["Content-Type"].startswith("text/html"), accept


def test_wants_json_reads_the_media_ranges_and_their_weights() -> None:
    assert dashboard.wants_json(["application/json"])
    assert dashboard.wants_json(["Application/JSON; charset=utf-8"])
    assert dashboard.wants_json(["text/plain", "application/json;q=0.5"])
    assert not dashboard.wants_json([])
    assert not dashboard.wants_json(["*/*"])
    assert not dashboard.wants_json([BROWSER_ACCEPT])
    assert not dashboard.wants_json(["application/json;q=0"])
    assert not dashboard.wants_json(["application/json;q=nonsense"])
    assert not dashboard.wants_json(["application/json", "text/html;q=0.1"])


async def test_an_unknown_file_is_a_json_404_and_dot_dot_reaches_nothing(
    balancer: Balancer,
) -> None:
    status, answer, body = await get(balancer.admin_url + "/dashboard/nope.js")
    assert status == 404 and answer["Content-Type"].startswith("application/json")
    assert json.loads(body) == {
        "error": "no dashboard file 'nope.js'",
        "files": ["index.html", "app.js", "style.css"],
    }
    host, port = balancer.admin_url.removeprefix("http://").rsplit(":", 1)
    for path in TRAVERSALS:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        response = await raw_exchange((host, int(port)), request.encode())
        assert response.status == 404, (path, response.status)
        assert "error" in json.loads(response.body), path
        assert b"import" not in response.body and b"root:" not in response.body


async def test_with_a_token_the_files_are_open_and_the_data_is_not(
    backends: list[Backend], balancer_factory: StartBalancer
) -> None:
    balancer = await with_token(backends, balancer_factory)
    for path, kind in TYPES.items():
        status, answer, _ = await get(balancer.admin_url + path)
        assert status == 200, path
        check_headers(answer, kind)
    for path in ("/status", "/series", "/metrics", "/alerts", "/sticky"):
        status, answer, body = await get(balancer.admin_url + path)
        assert status == 401, path
        assert answer["WWW-Authenticate"].startswith("Bearer") and "error" in json.loads(body)
    status, _, _ = await get(balancer.admin_url + "/status", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    # `..` under /dashboard/ is open, and names no file: a 404, never /status's data.
    host, port = balancer.admin_url.removeprefix("http://").rsplit(":", 1)
    for path in ("/dashboard/../status", "/dashboard/%2e%2e/status", "/dashboard/..%2fstatus"):
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        response = await raw_exchange((host, int(port)), request.encode())
        assert response.status in (401, 404), path
        assert b"backends" not in response.body, path
    # A POST under /dashboard/ is not open.
    status, _, _ = await get(balancer.admin_url + "/dashboard/app.js", method="POST")
    assert status == 401


async def test_the_supervisor_serves_the_same_page_and_files(aiohttp_client: Any) -> None:
    config = parse_config("backends:\n  - url: http://127.0.0.1:9001\n    name: b0\n", env={})
    admin = WorkerAdmin(config, lambda: [])
    client = await aiohttp_client(make_supervisor_app(admin, admin.reload_all))
    for path, kind in TYPES.items():
        response = await client.get(path)
        assert response.status == 200, path
        check_headers(response.headers, kind)
        assert await response.read() == file_of(path)
    response = await client.get("/", headers={"Accept": "application/json"})
    assert "/series" in {e["path"] for e in (await response.json())["endpoints"]}
    response = await client.get("/dashboard/nope.css")
    assert response.status == 404 and "error" in await response.json()
    await admin.close()


def test_the_page_has_no_inline_script_or_style_and_the_script_writes_no_html() -> None:
    files = {name: body.decode() for name, (body, _) in dashboard.assets().items()}
    parser = Tags()
    parser.feed(files["index.html"])
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert scripts == [{"src": "dashboard/app.js", "defer": None}]
    assert parser.script_text == ""
    assert not any(tag == "style" or "style" in attrs for tag, attrs in parser.tags)
    assert not any(name.startswith("on") for _, attrs in parser.tags for name in attrs)
    # The token is never a form field a submission could put in a URL.
    assert not any("name" in attrs for tag, attrs in parser.tags if tag == "input")
    script = files["app.js"]
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "localStorage" not in script and "sessionStorage" in script
    assert "http://www.w3.org/2000/svg" in script
    for text in files.values():  # nothing from another origin
        assert "https://" not in text and "//cdn" not in text


def test_the_files_are_package_data() -> None:
    """A non-editable install ships them (pyproject's package-data covers every file)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["package-data"]["balancer.dashboard"]
    for name in dashboard.TYPES:
        assert (ROOT / "balancer" / "dashboard" / name).is_file()
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
        assert len(dashboard.assets()[name][0]) < 40_000  # small, and readable
