"""The dashboard (SPEC §3): `GET /` on the admin port answers one HTML page, which loads one
script and one style sheet from `/dashboard/<file>`, all three package data in this folder,
read once when the admin app is made and served from memory by the balancer itself.

The page holds no data: its script polls `/status`, `/series`, `/alerts` and `/sticky` and
sends `Authorization: Bearer <token>` when `admin.token` is set (admin_auth leaves `GET /` and
`/dashboard/...` open). A client that asks for JSON and not HTML (`Accept: application/json`)
still gets the JSON index of endpoints at `GET /`, so scripts keep working.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

# The files, and what they are. Anything else under /dashboard/ is a 404: a name is looked up
# here, never joined to a path, so `..` and its encodings reach no file.
TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

# Only our own files: no inline script or style, no other origin; not framed (a drain button
# under someone else's page), no form that submits anywhere (the token never goes in a URL).
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@functools.cache
def assets() -> dict[str, tuple[bytes, str]]:
    """Each file's bytes and ETag, read once per process."""
    folder = resources.files(__name__)
    files = {}
    for name in TYPES:
        body = folder.joinpath(name).read_bytes()
        files[name] = (body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


def wants_json(accept: list[str]) -> bool:
    """Whether the `Accept` fields name application/json and not text/html (q=0 names
    nothing, RFC 9110 12.5.1): a script's request, not a browser's."""
    named = set()
    for field in accept:
        for media_range in field.split(","):
            kind, *params = (part.strip() for part in media_range.split(";"))
            quality = 1.0
            for param in params:
                key, _, value = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            if quality > 0:
                named.add(kind.lower())
    return "application/json" in named and "text/html" not in named


def add_routes(app: web.Application, index: Callable[[], dict[str, Any]]) -> None:
    """`GET /` (the page, or `index()` as JSON) and `GET /dashboard/{file}` on `app`."""
    files = assets()

    def answer(request: web.Request, name: str) -> web.Response:
        body, etag = files[name]
        headers = {**HEADERS, "Content-Type": TYPES[name], "ETag": etag}
        if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, headers=headers)

    async def root(request: web.Request) -> web.Response:
        if wants_json(request.headers.getall("Accept", [])):
            response = web.json_response(index())
        else:
            response = answer(request, "index.html")
        response.headers["Vary"] = "Accept"
        return response

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["file"]
        if name not in files:
            return web.json_response(
                {"error": f"no dashboard file {name!r}", "files": list(files)}, status=404
            )
        return answer(request, name)

    app.router.add_get("/", root)
    app.router.add_get("/dashboard/{file}", asset)
