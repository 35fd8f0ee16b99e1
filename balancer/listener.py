"""Accepting client connections ourselves, so that `limits.max_connections` holds (SPEC §7).

asyncio's and uvloop's servers accept whatever arrives and cannot be paused. At the cap, this
accept loop stops accepting: new connections wait in the kernel's listen backlog (not accepted
and dropped) while the process keeps serving those it has, and it accepts again below the cap.
It runs as an aiohttp site (balancer/http/site.py), so the runner's graceful shutdown stops it
like any other.

An accept that fails for lack of file descriptors, buffers or memory leaves the connection in
the backlog: the loop backs off briefly and tries again, logging once per episode (asyncio's
own server would log every time, uvloop's accepts and drops the connection).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from balancer.errors import LOCAL_RESOURCE_ERRNOS

log = logging.getLogger("balancer.listener")

RESOURCE_BACKOFF = 0.1  # seconds; a closed connection frees its fd well within it


class ConnectionGate:
    """Client connections open now against `cap`. The front counts them (connection_made and
    connection_lost); the accept loop waits here while the count is at the cap."""

    __slots__ = ("_below", "cap", "open")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self._below = asyncio.Event()
        self._below.set()

    def __repr__(self) -> str:
        return f"<ConnectionGate {self.open}/{self.cap} open>"

    def set_cap(self, cap: int) -> None:
        """A reload's limits.max_connections: accepting resumes at once under a higher cap."""
        self.cap = cap
        if self.open < cap:
            self._below.set()
        else:
            self._below.clear()

    def opened(self) -> None:
        self.open += 1
        if self.open >= self.cap:
            self._below.clear()

    def closed(self) -> None:
        self.open -= 1
        if self.open < self.cap:
            self._below.set()

    async def below_cap(self) -> None:
        while self.open >= self.cap:
            await self._below.wait()


class AcceptLoop(asyncio.AbstractServer):
    """One accept task per listening socket, sharing one gate."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        gate: ConnectionGate,
    ) -> None:
        self._loop = loop
        self.sockets = sockets  # what aiohttp's runner.addresses reads
        self._factory = protocol_factory
        self._gate = gate
        self._watched: set[socket.socket] = set()
        self._tasks = [loop.create_task(self._accept(sock)) for sock in sockets]

    def close(self) -> None:
        """Stop accepting and close the listening sockets; open connections stay (the
        runner shuts them down gracefully)."""
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets:
            self._watch(sock, None)  # before it closes: never watch a closed fd
            sock.close()
        self._tasks = []

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return bool(self._tasks)

    async def start_serving(self) -> None:
        return None  # serving since it was made

    async def serve_forever(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_closed(self) -> None:
        return None

    async def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        gate = self._gate
        readable = asyncio.Event()
        exhausted = False
        try:
            while True:
                if gate.open >= gate.cap:
                    self._watch(sock, None)
                    await gate.below_cap()  # the backlog holds the next ones (SPEC §7)
                self._watch(sock, readable.set)
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    readable.clear()
                    await readable.wait()
                    continue
                except OSError as exc:
                    if exc.errno not in LOCAL_RESOURCE_ERRNOS:
                        # ECONNABORTED and the like: that connection is gone, the next is not.
                        log.debug("accept failed: %s", exc)
                        continue
                    if not exhausted:
                        exhausted = True
                        log.warning(
                            "cannot accept client connections: %s (%d open); retrying every %gs",
                            exc.strerror or exc,
                            gate.open,
                            RESOURCE_BACKOFF,
                        )
                    self._watch(sock, None)
                    await asyncio.sleep(RESOURCE_BACKOFF)
                    continue
                if exhausted:
                    exhausted = False
                    log.warning("accepting client connections again (%d open)", gate.open)
                try:
                    await loop.connect_accepted_socket(self._factory, conn)
                except OSError as exc:
                    conn.close()
                    log.info("dropped a connection as it was accepted: %s", exc)
                except Exception:  # a bug must not end accepting for good
                    conn.close()
                    log.exception("could not serve an accepted connection")
        finally:
            self._watch(sock, None)

    def _watch(self, sock: socket.socket, callback: Callable[[], None] | None) -> None:
        """Watch the listening socket while accepting, and only then: at the cap or backing
        off, a backlog that is not empty would wake the event loop at every turn. Watching
        all along (not `loop.sock_accept` each time) spares two epoll_ctl calls a connection."""
        watched = sock in self._watched
        if callback is not None and not watched:
            self._loop.add_reader(sock, callback)
            self._watched.add(sock)
        elif callback is None and watched:
            self._loop.remove_reader(sock)
            self._watched.discard(sock)


async def bind(host: str, port: int, *, backlog: int) -> list[socket.socket]:
    """Listening sockets for `host:port` as asyncio's create_server makes them: one per
    address the host resolves to, SO_REUSEADDR, IPv6 sockets v6-only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
