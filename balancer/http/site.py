"""The aiohttp site that serves listening sockets through the balancer's own accept loop
(balancer/listener.py), so that `limits.max_connections` holds (SPEC §7). It sets
`BaseSite._server`, aiohttp's private slot for what the runner stops at cleanup.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from aiohttp import web

from balancer.listener import AcceptLoop, ConnectionGate


class CappedSite(web.BaseSite):
    """An aiohttp site over listening sockets, served by an `AcceptLoop`: aiohttp's
    `SockSite` with the cap. The runner's cleanup stops it as it stops any site (it closes
    `_server`, the one attribute of BaseSite a subclass sets). Plain HTTP only: a TLS
    handshake awaited in the accept loop would let one slow client stall accepting (hand it to
    a task per connection first)."""

    __slots__ = ("_gate", "_protocol_factory", "_sockets")

    def __init__(
        self, runner: web.BaseRunner, sockets: list[socket.socket], gate: ConnectionGate
    ) -> None:
        super().__init__(runner)  # it checks that the runner is set up
        assert runner.server is not None
        self._protocol_factory: Callable[[], asyncio.BaseProtocol] = runner.server
        self._sockets = sockets
        self._gate = gate

    @property
    def name(self) -> str:
        host, port = self._sockets[0].getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        for sock in self._sockets:
            sock.setblocking(False)
        loop = asyncio.get_running_loop()
        self._server = AcceptLoop(loop, self._sockets, self._protocol_factory, self._gate)
