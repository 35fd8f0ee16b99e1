"""The client side of HTTP on aiohttp's server: the only package that depends on aiohttp's
private API, so an aiohttp upgrade is read and re-tested here (pyproject pins aiohttp's minor).

The rest of the balancer uses aiohttp's public names only (`aiohttp.web`, `ClientSession`,
what `aiohttp.__all__` and `aiohttp.web.__all__` list) and subclasses no aiohttp class but
its exceptions; tests/test_private_api.py holds it to that. What this package uses, and why:

- front.py: `FrontHandler` subclasses `RequestHandler` (through loop.py) for the limits aiohttp
  lacks (a deadline for the whole head, a cap on its size, 414/431): it reads and edits the
  parser's message queue (`_messages`, `_ErrInfo` entries, `RawRequestMessage._replace`),
  `_parser`, `_payload_parser`, `_upgraded`, `_request_count`, `_waiter`, and raises
  `aiohttp.http_exceptions` errors. `FrontServer` subclasses `web.Server` (`_kwargs`, `_loop`)
  for a reload's limits; `OwnResponse` overrides `Response._prepare_headers` to drop Server.
- loop.py: `RequestHandler.start` rewritten without a Task per request, with the fields and
  helpers it uses (`_handle_request`, `_make_error_handler`, `_task_handler`,
  `_keepalive_handle`, `_PAYLOAD_ACCESS_ERROR`, `ERROR`, `StreamWriter`, `ceil_timeout`,
  `request._task`, ...): adapted from aiohttp's web_protocol.py, re-read on each upgrade.
- mend.py: aiohttp's `HttpRequestParser` built as aiohttp builds it (`protocol._loop`), to
  re-parse a read where the C parser drops or carries over what it should not.
- admin_server.py: the admin app on the front's handler (`Application._handle`,
  `_make_request`, `_set_loop`, `AppRunner._make_server`), so the admin port has its limits.
- site.py: a `BaseSite` over our accept loop (listener.py), through `BaseSite._server`.
- parser.py: for the request path, `RawRequestMessage` and `BaseRequest._message` (read
  straight), `HttpProcessingError` (a malformed body), and whether the C parser is in use.
- takeover.py: `RequestHandler.set_parser` and its payload-parser shape, for the tunnel.
- date.py: `aiohttp.helpers.rfc822_formatted_time`, the Date value of responses we write.
"""
