"""The naive baseline proxy (benchmarks/README.md): usage `naive_proxy.py PORT BACKEND_URL...`.

aiohttp web.Application + one shared ClientSession, round-robin, hop-by-hop headers dropped.
Deliberately plain: it is what "just write it with aiohttp" gives, the bar to clear.
"""

import itertools
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
}


def hop_free(headers, drop=()):
    skip = HOP | {h.strip().lower() for h in headers.get("Connection", "").split(",")} | set(drop)
    return [(k, v) for k, v in headers.items() if k.lower() not in skip]


async def make_app(backends):
    upstream = itertools.cycle(backends)
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)

    async def handle(request):
        url = next(upstream) + request.raw_path
        data = request.content if request.body_exists else None
        async with session.request(
            request.method,
            url,
            headers=hop_free(request.headers),
            data=data,
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            headers = hop_free(resp.headers, drop=("content-length",))
            return web.Response(status=resp.status, headers=headers, body=body)

    async def close(app):
        await session.close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    app = make_app([u.rstrip("/") for u in sys.argv[2:]])
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )
