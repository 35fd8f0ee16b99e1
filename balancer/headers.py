"""Header rules of the request path: hop-by-hop removal, X-Forwarded-*, framing checks.

Pure functions over raw header pairs (bytes, as aiohttp's C parser hands them over), so the
forwarded head is built once per request without decoding and re-encoding every field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from balancer.errors import BadRequest

RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 9110 7.6.1: a proxy removes these and every header named in Connection before
# forwarding; Proxy-Connection is its non-standard twin, still sent by old clients.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Replaced by the balancer's own values (SPEC §4); Expect is answered by the balancer itself.
_REPLACED_ON_REQUEST = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"expect"})


def connection_tokens(raw_headers: RawHeaders) -> frozenset[bytes]:
    """The lower-cased field names listed in every Connection header (RFC 9110 7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


# Fields a client cannot have removed by naming them in Connection.
_NEVER_DROPPED = frozenset({b"host"})


def names_more_fields(connection: bytes) -> bool:
    """Whether a Connection value names a field other than the hop-by-hop ones. `close`
    counts as one: a field named Close (reserved, RFC 9110 18.4) must go too."""
    lowered = connection.lower()
    if lowered in HOP_BY_HOP:  # one hop-by-hop token, as most are (`keep-alive`): no split
        return False
    return any(token.strip() not in HOP_BY_HOP for token in lowered.split(b",") if token.strip())


def request_head(
    method: str,
    target: str,
    raw_headers: RawHeaders,
    *,
    client_ip: str,
    proto: str,
    default_host: bytes,
    body_framing: bytes | None,
    upgrade: bytes | None = None,
    drop_cookie: bytes | None = None,
) -> bytes:
    """Serialise the request head sent to a backend.

    `body_framing` is the framing line for the body (`Content-Length: n` or
    `Transfer-Encoding: chunked`) or None for no body; `upgrade` the protocol of a tunnelled
    Upgrade request (the one exception to hop-by-hop removal, SPEC §4); `drop_cookie` the
    balancer's own sticky cookie, which backends never see (SPEC §2).
    """
    # One pass drops the hop-by-hop fields; a Connection that names more fields (rare) means
    # a second pass, dropping those too.
    dropped = HOP_BY_HOP
    while True:
        parts = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1")]
        forwarded_for: list[bytes] = []
        host: bytes | None = None
        for name, value in raw_headers:
            lname = name.lower()
            if lname in dropped or lname in _REPLACED_ON_REQUEST or lname == b"content-length":
                if lname == b"connection" and dropped is HOP_BY_HOP and names_more_fields(value):
                    break
                continue
            if lname == b"x-forwarded-for":
                forwarded_for.append(value)
                continue
            if lname == b"host":
                host = value
            elif lname == b"cookie" and drop_cookie is not None:
                value = without_cookie(value, drop_cookie)
                if not value:
                    continue
            parts += (name, b": ", value, b"\r\n")
        else:
            break
        dropped = HOP_BY_HOP | (connection_tokens(raw_headers) - _NEVER_DROPPED)
    if host is None:
        # An HTTP/1.0 client may send no Host; the backend still needs one (RFC 9112 3.2).
        parts += (b"Host: ", default_host, b"\r\n")
    forwarded_for.append(client_ip.encode("latin-1"))
    parts += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\n")
    parts += (b"X-Forwarded-Proto: ", proto.encode("latin-1"), b"\r\n")
    if host:  # an empty Host (RFC 9112 3.2 allows it) gives no X-Forwarded-Host
        parts += (b"X-Forwarded-Host: ", host, b"\r\n")
    if upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    if body_framing is not None:
        parts += (body_framing, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ]. A reg-name of unreserved
# characters, percent-encodings and sub-delims but ',' (a list of hosts is no host), or an
# IP-literal in brackets. No space, '/', '@', '?', '#' or anything outside ASCII.
_HOST = re.compile(
    r"(?:[A-Za-z0-9\-._~%!$&'()*+;=]+|\[[0-9A-Za-z:.%\-_~]+\])(?::[0-9]*)?", re.ASCII
)


_VALID_HOSTS: dict[str, bool] = {}  # a few names recur on every request: judged once each


def valid_host(host: str) -> bool:
    """Whether a (non-empty) Host value is one host[:port] (SPEC §4: else 400)."""
    valid = _VALID_HOSTS.get(host)
    if valid is None:
        valid = _HOST.fullmatch(host) is not None
        if len(_VALID_HOSTS) < 256:  # a client cannot grow it without bound
            _VALID_HOSTS[host] = valid
    return valid


def origin_form(target: str, raw_headers: RawHeaders) -> str:
    """The request target as a backend should get it (RFC 9112 3.2.2).

    An absolute-form target (`GET http://host/path`) becomes origin-form (`/path`) when its
    authority is the Host the client sent, so the backend and the X-Forwarded-Host agree;
    otherwise it is refused. Origin-form and `*` pass unchanged.
    """
    if target.startswith("/") or target == "*":
        return target
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise BadRequest("request target is neither origin-form nor absolute-form")
    authority, slash, path = rest.partition("/")
    query = ""
    if "?" in authority:
        authority, _, query = authority.partition("?")
        query = "?" + query
    host = next((v for n, v in raw_headers if n.lower() == b"host"), b"")
    if authority.lower() != host.decode("latin-1").lower():
        raise BadRequest("absolute-form target and Host disagree")
    return (slash + path if slash else "/") + query


def without_cookie(header: bytes, name: bytes) -> bytes:
    """A Cookie header value without the pairs named `name`."""
    pairs = [p for p in header.split(b";") if p.strip().partition(b"=")[0] != name]
    return b";".join(pairs).strip()


def content_length(raw_headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The response's Content-Length, or None; the parser already rejected conflicting ones."""
    for name, value in raw_headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value)
    return None


def request_body_framing(
    version: tuple[int, int], raw_headers: RawHeaders, max_body: int
) -> bytes | None:
    """Check how the client framed its body; return the framing line to forward, or None.

    aiohttp's C parser (llhttp, strict) already refuses CL+TE, conflicting or non-numeric
    Content-Length, obs-fold, bad field lines and duplicate Host; this adds the rules it
    leaves to us (RFC 9112 6.1): a Transfer-Encoding other than plain `chunked` is 501,
    and Transfer-Encoding in an HTTP/1.0 request is faulty framing, 400.
    """
    length: bytes | None = None
    encoding: bytes | None = None
    for name, value in raw_headers:
        n = len(name)
        if n == 14 and name.lower() == b"content-length":
            length = value.strip()
        elif n == 17 and name.lower() == b"transfer-encoding":
            encoding = value if encoding is None else encoding + b"," + value
    if encoding is not None:
        if version < (1, 1):
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if encoding.strip().lower() != b"chunked":
            raise BadRequest("unsupported Transfer-Encoding", status=501)
        return b"Transfer-Encoding: chunked"
    if length is None:
        return None
    if max_body and int(length) > max_body:
        raise BadRequest("request body too large", status=413)
    return b"Content-Length: " + length
