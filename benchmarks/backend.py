"""A small aiohttp backend for the benchmarks.

    python benchmarks/backend.py PORT [NAME]

Routes:
  GET  /                      a fixed ~110-byte text body (the fallback when nginx is missing)
  GET  /health                200 "ok"
  GET  /big?size=N            N bytes of zeros streamed in 64 KiB chunks, no Content-Length
                              (chunked); add &cl=1 to send a Content-Length instead
  POST /sink                  reads the body in chunks, answers the byte count as text
Anything else: the same body as `/`.
"""

from __future__ import annotations

import sys

from aiohttp import web

CHUNK = 64 * 1024
ZEROS = bytes(CHUNK)


def small_body(name: str) -> bytes:
    """About 110 bytes, like the nginx `return 200` backends of benchmarks/run.py."""
    head = f"hello from {name}: "
    return (head + "x" * (109 - len(head)) + "\n").encode()


async def big(request: web.Request) -> web.StreamResponse:
    size = int(request.query.get("size", "0"))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("cl") == "1":
        resp.content_length = size
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    left = size
    while left > 0:
        n = min(left, CHUNK)
        await resp.write(ZEROS if n == CHUNK else ZEROS[:n])
        left -= n
    await resp.write_eof()
    return resp


async def sink(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.Response(text=str(total))


def make_app(name: str) -> web.Application:
    body = small_body(name)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=0)
    app.router.add_get("/big", big)
    app.router.add_post("/sink", sink)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def main() -> None:
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else f"backend-{port}"
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(make_app(name), host="127.0.0.1", port=port, print=None, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
