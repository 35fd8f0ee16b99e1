"""aiohttp's per-connection request loop, without a Task per request.

aiohttp's `RequestHandler.start` (3.14) runs each request in a Task of its own (so that it gets
a copy of the context variables; eagerly started on Python 3.12+, scheduled on 3.11), then
awaits the returned response's `prepare` and `write_eof` and logs access. The proxy uses no
context variables, writes its responses to the transport itself and returns a `Sent`, so for
it that is pure cost: counted with callgrind, aiohttp's server answering by itself went from
69k to 52k instructions per request, the balancer from 200k to 182k.

`LeanRequestHandler.start` below is aiohttp's loop with three changes: the handler runs inline
in the connection's task (a client that goes away still cancels it, through
`handler_cancellation`, as before); a `Sent` skips `finish_response` unless a declined
upgrade left bytes to re-parse (aiohttp does that in `finish_response`); and one StreamWriter
serves the connection until aiohttp writes a response through it. Everything else
(keep-alive timer, lingering read of an unread body, error answers, pipelining back-pressure)
is aiohttp's own code, kept as it is there. Adapted from aiohttp's web_protocol.py
(Apache-2.0); re-check it when aiohttp's `start` changes (pyproject pins aiohttp's minor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.helpers import ceil_timeout
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_exceptions import HTTPException
from aiohttp.web_protocol import (
    _PAYLOAD_ACCESS_ERROR,
    ERROR,
    RequestHandler,
    _ErrInfo,
)
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from balancer.response import Sent


class LeanRequestHandler(RequestHandler):
    """aiohttp's RequestHandler with the request loop above. `route` is what the proxy kept
    of the request in progress (requests on one connection are answered one at a time), for
    the `answered` hook."""

    __slots__ = ("route",)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Callable[[BaseRequest], Awaitable[StreamResponse]],
    ) -> tuple[StreamResponse, bool]:
        resp: Any  # a StreamResponse, or the proxy's Sent
        self._request_in_progress = True
        try:
            try:
                self._current_request = request
                resp = await request_handler(request)
            finally:
                self._current_request = None
        except HTTPException as exc:
            resp, reset = await self.finish_response(request, exc, start_time)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            resp = self.handle_error(request, 504)
            resp, reset = await self.finish_response(request, resp, start_time)
        except Exception as exc:
            resp = self.handle_error(request, 500, exc)
            resp, reset = await self.finish_response(request, resp, start_time)
        else:
            if type(resp) is Sent and not self._upgraded:
                reset = False  # written already; there is no access log to write
            else:
                resp, reset = await self.finish_response(request, resp, start_time)
        finally:
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
        return resp, reset

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 (aiohttp's)
        """Graceful stop of this connection, the in-flight request cut at `timeout`.

        aiohttp waits `timeout` for a request in progress, then fails only its body and waits
        `timeout` again before it cancels the handler: twice shutdown_timeout for a request
        that is waiting on a backend. SPEC: in-flight requests get shutdown_timeout."""
        cut = None
        if timeout is not None:
            cut = self._loop.call_later(timeout, self._cut_handler)
        try:
            await super().shutdown(timeout)
        finally:
            if cut is not None:
                cut.cancel()

    def _cut_handler(self) -> None:
        task = self._task_handler
        if task is not None and not task.done():
            task.cancel()

    async def _finish_body(self, payload: StreamReader) -> None:
        """After the answer: if the handler left some of the body unread, read and drop it for
        a while (lingering_time), so that the client reads the answer rather than a reset;
        close if it is still not over. aiohttp's own code, moved out of the loop."""
        loop = self._loop
        if not payload.is_eof():
            lingering_time = self._lingering_time
            if not self._force_close and lingering_time:
                now = loop.time()
                end_t = now + lingering_time
                try:
                    while not payload.is_eof() and now < end_t:
                        async with ceil_timeout(end_t - now):
                            await payload.readany()
                        now = loop.time()
                except (asyncio.CancelledError, TimeoutError):
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
            if not payload.is_eof() and not self._force_close:
                self.close()
        payload.set_exception(_PAYLOAD_ACCESS_ERROR)

    async def start(self) -> None:
        loop = self._loop
        manager = self._manager
        assert manager is not None
        server: Any = manager  # a FrontServer: its `answered` hook
        keepalive_timeout = self._keepalive_timeout
        resp: Any = None
        # One writer serves every request of the connection until aiohttp writes a response
        # through it (its state is per response); the proxy's own responses never touch it.
        writer: StreamWriter | None = None
        factory = self._request_factory
        assert factory is not None
        assert self._request_handler is not None

        while not self._force_close:
            if not self._messages:
                try:
                    self._waiter = loop.create_future()
                    await self._waiter
                finally:
                    self._waiter = None

            message, payload = self._messages.popleft()
            if self._parser is not None:
                self._parser.message_consumed()
            if self._buffer_paused and len(self._messages) <= self._msg_queue_resume_size:
                self._resume_reading_if_drained()

            start = loop.time() if self._logging_enabled else None
            manager.requests_count += 1
            if writer is None:
                writer = StreamWriter(self, loop)
            if isinstance(message, _ErrInfo):
                request_handler = self._make_error_handler(message)
                message = ERROR
            else:
                request_handler = self._request_handler
            request = factory(
                message,
                payload,
                self,
                writer,
                self._task_handler or asyncio.current_task(loop),  # type: ignore[arg-type]
            )
            resp = None
            self.route: tuple[Any, ...] | None = None
            try:
                try:
                    resp, reset = await self._handle_request(request, start, request_handler)
                except ConnectionError:
                    break
                if server.answered is not None:  # decisions, the access log
                    server.answered(request, resp, self.route)
                if reset:
                    break
                if type(resp) is not Sent:
                    writer = None  # it wrote that response: the next one gets a fresh one

                self._keepalive = bool(resp.keep_alive)

                if payload is not EMPTY_PAYLOAD:  # the request had a body
                    await self._finish_body(payload)

            except asyncio.CancelledError:
                self.force_close()
                if server.answered is not None and resp is None:
                    server.answered(request, None, self.route)  # cut before its answer
                raise
            except Exception as exc:
                self.log_exception("Unhandled exception", exc_info=exc)
                self.force_close()
            except BaseException:
                self.force_close()
                raise
            finally:
                request._task = None  # type: ignore[assignment]  # a reference cycle

            if self._keepalive and not self._close and not self._force_close:
                close_time = loop.time() + keepalive_timeout
                self._next_keepalive_close_time = close_time
                if self._keepalive_handle is None:
                    self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
            else:
                break

        if not self._force_close:
            self._task_handler = None
            if self.transport is not None:
                self.transport.close()
