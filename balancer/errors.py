"""The errors of the request path, each knowing its HTTP answer.

Library exceptions are translated into these once, at the I/O edge (upstream.py); the proxy
turns them into a response by reading `status` and decides on a retry by reading `sent`.
"""

from __future__ import annotations

import errno

#: What the balancer itself can run out of (fds, buffers, memory): a socket call failing with
#: one of these failed in this process, not at the peer.
LOCAL_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class ProxyError(Exception):
    """A request the proxy could not complete; `status` is what the client gets."""

    status = 502
    #: Whether any byte of the request may have reached the backend (SPEC §4 retry rule).
    sent = True
    #: Whether the backend is to blame (counts as a failed attempt for its stats and breaker).
    backend_failure = True
    #: Whether the client is to blame: it is answered (if anyone is left) and its connection
    #: closed, never retried.
    client_fault = False
    #: The `reason` label of a retry it caused (balancer_retries_total).
    reason = "error"

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__class__.__doc__ or self.__class__.__name__)
        self.detail = detail


class NoBackendAvailable(ProxyError):
    """No backend can be picked for the request."""

    reason = "no_backend"

    status = 503
    sent = False
    backend_failure = False


class ConnectFailed(ProxyError):
    """The backend refused the connection or did not accept it within timeouts.connect."""

    reason = "connect_failed"
    sent = False


class BackendDropped(ProxyError):
    """The backend closed or reset the connection before a complete response head."""

    reason = "dropped"


class StaleConnection(BackendDropped):
    """A reused keep-alive connection was closed by the backend before any byte of an answer.

    The backend timed the idle connection out as the request went out on it (RFC 9112 9.3.1):
    not the backend's failure, so it counts against neither its stats nor its breaker. The
    request may be sent again on a fresh connection when it is safe to (SPEC §4)."""

    reason = "stale_connection"

    backend_failure = False


class BackendTimeout(ProxyError):
    """The backend sent nothing for longer than timeouts.read."""

    reason = "timeout"

    status = 504


class BadBackendResponse(ProxyError):
    """The backend's response could not be parsed or was framed ambiguously."""

    reason = "bad_response"


class ClientGone(ProxyError):
    """The client went away mid-request: nobody is left to answer."""

    status = 499
    backend_failure = False
    client_fault = True


class ClientTimeout(ProxyError):
    """The client sent no body bytes for longer than timeouts.client_body."""

    status = 408
    backend_failure = False
    client_fault = True


class BadRequest(ProxyError):
    """The client's request is malformed or ambiguous and is never forwarded."""

    status = 400
    sent = False
    backend_failure = False
    client_fault = True

    def __init__(self, detail: str = "", status: int = 400) -> None:
        super().__init__(detail)
        self.status = status


class LocalResourceError(ProxyError):
    """The balancer itself is out of file descriptors, buffers or memory (EMFILE, ENFILE,
    ENOBUFS, ENOMEM): the backend was never reached and is not to blame. Counting it against
    the backend marked healthy backends down when client connections exhausted the fds."""

    reason = "local_resources"

    status = 503
    sent = False
    backend_failure = False
