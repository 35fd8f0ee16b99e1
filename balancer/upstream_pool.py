"""The idle keep-alive connections to one backend, and new ones within timeouts.connect.

A connection comes back here only clean (upstream.UpstreamConnection.finish decides); one
idle longer than timeouts.upstream_idle is closed rather than reused. A connect that fails
for lack of the balancer's own resources (EMFILE and the like) is a LocalResourceError, never
held against the backend.
"""

from __future__ import annotations

import asyncio
import ssl

from balancer.errors import LOCAL_RESOURCE_ERRNOS, ConnectFailed, LocalResourceError
from balancer.upstream import UpstreamConnection

MAX_IDLE_CONNECTIONS = 256


class UpstreamPool:
    """Idle keep-alive connections to one backend, most recently used first."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        use_tls: bool,
        connect_timeout: float,
        read_timeout: float,
        loop: asyncio.AbstractEventLoop,
        idle_timeout: float = 1.5,
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self.loop = loop
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout  # timeouts.upstream_idle
        self.use_tls = use_tls
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if use_tls else None
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()

    def __repr__(self) -> str:
        return (
            f"<UpstreamPool {self.address} [Connections: {len(self._open) - len(self._idle)} "
            f"active, {len(self._idle)} idle]>"
        )

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    async def acquire(self) -> UpstreamConnection:
        return self.take_idle() or await self.connect()

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for reuse, or None."""
        idle = self._idle
        if idle:
            now = self.loop.time()
            while idle:
                conn = idle.pop()
                if conn.transport is not None and now - conn.idle_since < self.idle_timeout:
                    conn.reused = True
                    return conn
                conn.close()
        return None

    async def connect(self) -> UpstreamConnection:
        """A new connection, within timeouts.connect."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self._ssl
                )
        except TimeoutError:
            raise ConnectFailed(
                f"no connection to {self.address} within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            if exc.errno in LOCAL_RESOURCE_ERRNOS:
                # The balancer's own exhaustion: never held against the backend's health or
                # breaker (19.7k idle clients once marked every healthy backend down).
                raise LocalResourceError(
                    f"no connection to {self.address}: {exc.strerror or exc} (in the balancer)"
                ) from None
            raise ConnectFailed(
                f"cannot connect to {self.address}: {exc.strerror or exc}"
            ) from None
        self._open.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if len(self._idle) >= MAX_IDLE_CONNECTIONS:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: drop it from the pool."""
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
