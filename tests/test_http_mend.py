"""balancer.http.mend against aiohttp's real C request parser: each mend undoes what the
parser does to a proxy (trailer carry-over, a lost request before Connection: close, a dropped
tail after a declined upgrade)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.base_protocol import BaseProtocol

from balancer.http import mend

CHUNKED = (
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\nAuthorization: Bearer attacker\r\n\r\n"
)
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def _parser() -> Any:
    return mend.new_parser(BaseProtocol(asyncio.get_running_loop()), 2**16)


async def test_the_parser_carries_a_trailer_over_and_absorbing_it_drops_it() -> None:
    carried = _parser()
    carried.feed_data(CHUNKED)
    messages, _, _ = carried.feed_data(NEXT)
    # The flaw itself (aiohttp 3.14): if this starts failing, aiohttp fixed it.
    assert (b"Authorization", b"Bearer attacker") in messages[0][0].raw_headers

    mended = _parser()
    mended.feed_data(CHUNKED)
    assert mend.absorb_trailer(mended)
    messages, _, _ = mended.feed_data(NEXT)
    assert messages[0][0].raw_headers == ((b"Host", b"a"),)


async def test_absorbing_without_a_trailer_changes_nothing() -> None:
    parser = _parser()
    parser.feed_data(CHUNKED.replace(b"Authorization: Bearer attacker\r\n", b""))
    assert mend.absorb_trailer(parser)
    messages, _, _ = parser.feed_data(NEXT)
    assert messages[0][0].path == "/next"
    assert messages[0][0].raw_headers == ((b"Host", b"a"),)


async def test_a_carried_host_trailer_is_absorbed_too() -> None:
    parser = _parser()
    parser.feed_data(CHUNKED.replace(b"Authorization: Bearer attacker", b"Host: evil"))
    assert mend.absorb_trailer(parser)
    messages, _, _ = parser.feed_data(NEXT)
    assert messages[0][0].headers["Host"] == "a"


async def test_messages_until_close_stops_at_the_close() -> None:
    data = (
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGARBAGE\r\n\r\n"
    )
    found = mend.messages_until_close(_parser(), data)
    assert found is not None
    assert [m.path for m, _ in found] == ["/1", "/2"]


async def test_a_walk_gives_up_on_what_it_cannot_frame() -> None:
    assert mend.messages_until_close(_parser(), b"NOT HTTP\r\n\r\n") is None
    chunked = CHUNKED + b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    assert mend.messages_until_close(_parser(), chunked) is None


async def test_end_of_messages_after_an_upgrade() -> None:
    upgrade = b"GET /u HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    assert mend.end_of_messages(_parser(), upgrade + NEXT, 1) == len(upgrade)
