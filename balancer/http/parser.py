"""aiohttp's request parser as the rest of the balancer meets it: the message it makes, read
straight off the request; the error its body reader raises; whether it is the C one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError as HttpProcessingError
from aiohttp.http_parser import RawRequestMessage as RawRequestMessage

# The parsed request (`BaseRequest._message`), read straight: BaseRequest hands each part out
# through a cached property that costs a Python call the first time (~6% of a request,
# callgrind). An attrgetter is a C call: no Python frame either.
parsed_message: Callable[[web.BaseRequest], RawRequestMessage] = operator.attrgetter("_message")


def uses_c_parser() -> bool:
    """Whether aiohttp serves with its C parser (llhttp), not its pure-Python one, which it
    falls back to silently when its C extension is missing or AIOHTTP_NO_EXTENSIONS is set."""
    from aiohttp import web_protocol

    parser = getattr(web_protocol, "HttpRequestParser")  # noqa: B009 (not re-exported)
    return bool(parser.__module__ == "aiohttp._http_parser")
