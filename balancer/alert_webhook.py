"""The alerts' webhook (SPEC §6): each notice POSTed as JSON, in order, by a task of its own.

`send` only puts the notice on a bounded queue, so the evaluation that makes it and the
requests that share the event loop never wait for the receiver. One POST at a time (a
`firing` always goes before its `resolved`), each bounded by TIMEOUT in all (connect, send,
the answer's head); redirects are not followed (a 3xx is a failure) and nothing of the answer's
body is read: only its status counts. A failure is logged once per run of failures, and the
recovery once; a queue that is full (a receiver that hangs while alerts keep changing) drops
the new notice, logged once per run of drops. Nothing is retried.

URLs are logged as `shown_url` gives them: scheme, host and port only, since a webhook's
path or query often holds its secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from balancer import __version__
from balancer.alerts import Notice
from balancer.config_checks import shown_url

log = logging.getLogger("balancer.alerts")

TIMEOUT = 5.0  # seconds for one POST, in all
QUEUE = 1000  # notices waiting at most
FLUSH = 1.0  # seconds what is queued may take to go when the balancer stops


class Webhook:
    def __init__(self, *, timeout: float = TIMEOUT, queue: int = QUEUE) -> None:
        self.timeout = timeout
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=queue)
        self.sent = 0  # POSTs answered 2xx
        self.failed = 0  # POSTs that failed (no answer, not 2xx, too slow)
        self.dropped = 0  # notices the full queue could not take
        self.pending = 0  # notices queued or being POSTed
        self._failing = 0  # failures since the last success (0: delivering)
        self._dropping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def send(self, notice: Notice) -> None:
        """Queue `notice` for its URL; never waits."""
        if not notice.url:
            return
        try:
            self.queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning(
                    "webhook %s: %d notices are waiting already; dropping new ones until "
                    "the receiver catches up",
                    shown_url(notice.url),
                    self.queue.qsize(),
                )
            return
        self.pending += 1
        self._dropping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, flush: float = FLUSH) -> None:
        """Stop; what is queued (or being POSTed) gets up to `flush` seconds to go first."""
        if self._task is not None and self.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), flush)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            notice = await self.queue.get()
            try:
                why = await self.post(notice)
            finally:
                self.pending -= 1
                self.queue.task_done()
            if why is None:
                self.sent += 1
                if self._failing:
                    log.info(
                        "webhook %s delivers again (%d notice(s) failed before)",
                        shown_url(notice.url),
                        self._failing,
                    )
                self._failing = 0
            else:
                self.failed += 1
                if not self._failing:
                    log.warning(
                        "webhook %s: %s (%s %s); further failures are not logged until "
                        "one succeeds",
                        shown_url(notice.url),
                        why,
                        notice.body.get("status"),
                        notice.body.get("rule"),
                    )
                self._failing += 1

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # force_close: no connection kept to a receiver between notices, none reused
                # after an answer whose body we did not read.
                connector=aiohttp.TCPConnector(force_close=True, limit=1),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": f"balancer/{__version__}"},
            )
        return self._session

    async def post(self, notice: Notice) -> str | None:
        """POST one notice: None when the receiver answered 2xx, else why not."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self._client().post(
                notice.url, json=notice.body, allow_redirects=False, timeout=timeout
            ) as response:
                status = response.status
        except TimeoutError:
            return f"no answer within {self.timeout:g}s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return _why(exc)
        if 200 <= status < 300:
            return None
        if 300 <= status < 400:
            return f"answered {status} (redirects are not followed)"
        return f"answered {status}"


def _why(exc: Exception) -> str:
    """A failure in words, without the URL (aiohttp puts it in some messages)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"an answer it cannot read: {exc.message}"[:200]
    if isinstance(exc, OSError) and exc.strerror:
        return f"cannot POST: {exc.strerror}"
    return f"cannot POST: {type(exc).__name__}"
