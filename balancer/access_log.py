"""The access log (SPEC §6): one line per request, `text` or `json`, to stderr or a file.

What the request path pays is one tuple appended to a list (`entry`): the lines are formatted
and written by a thread, at least once a second (or sooner once many are waiting), so neither
a slow disk nor a full stderr pipe ever blocks the event loop. Should the writer fall behind
by MAX_PENDING entries, new ones are dropped and counted (logged once per run of drops), never
held without bound. The file is reopened on SIGUSR1 and on a reload (log rotation: move the
file, then signal), in the writer thread too.

Never a header value: no Authorization, no Cookie. The target is the client's, escaped (text:
`\\"`, `\\\\` and `\\xHH` for anything not printable ASCII; json: as JSON escapes it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger("balancer.access")

FLUSH_EVERY = 1.0  # seconds: the most a line waits (SPEC §6)
FLUSH_AT = 1024  # entries: written sooner than that once this many wait
MAX_PENDING = 100_000  # entries waiting at most (about 20 MB): past it new ones are dropped
# Writes of whole lines at most this long are atomic on a pipe (POSIX PIPE_BUF), so the lines
# of several workers sharing one stderr never interleave mid-line; on a file, O_APPEND.
CHUNK = select.PIPE_BUF


class Entry(NamedTuple):
    time: float  # epoch seconds, when the request started
    client: str
    method: str
    target: str
    status: int
    bytes: int  # body bytes sent to the client
    duration: float  # seconds
    backend: str  # its name, or "-"
    attempts: int
    cache: str  # "-" until there is a cache
    sticky: str  # "-", "hit", "new", "repin"...


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text (the writer thread's)


def _timestamp(epoch: float) -> str:
    seconds = int(epoch)
    if seconds != _second[0]:
        _second[0], _second[1] = seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{_second[1]}.{int((epoch - seconds) * 1000):03d}Z"


def _plain(text: str) -> bool:
    """Printable ASCII with nothing to escape: the common case, checked in C."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def _escape(text: str) -> str:
    if _plain(text) and " " not in text:
        return text
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 < code < 0x7F:
            out.append(char)
        else:
            out.append("".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogateescape")))
    return "".join(out)


def _json_text(text: str) -> str:
    return f'"{text}"' if _plain(text) else json.dumps(text)


def text_line(e: Entry) -> str:
    """`time client "method target" status bytes duration_ms backend attempts cache sticky`"""
    return (
        f'{_timestamp(e.time)} {_escape(e.client)} "{_escape(e.method)} {_escape(e.target)}" '
        f"{e.status} {e.bytes} {e.duration * 1000:.1f} {_escape(e.backend)} {e.attempts} "
        f"{e.cache} {e.sticky}\n"
    )


def json_line(e: Entry) -> str:
    """One object with SPEC §6's keys, in its order (written by hand: json.dumps of a dict
    per line cost more than the request)."""
    return (
        f'{{"time":"{_timestamp(e.time)}","client":{_json_text(e.client)},'
        f'"method":{_json_text(e.method)},"target":{_json_text(e.target)},'
        f'"status":{e.status},"bytes":{e.bytes},"duration_ms":{e.duration * 1000:.3f},'
        f'"backend":{_json_text(e.backend)},"attempts":{e.attempts},'
        f'"cache":"{e.cache}","sticky":"{e.sticky}"}}\n'
    )


class _Seen(dict[str, str]):
    """Each text as written in a line, remembered: clients, methods and backend names repeat,
    and a dict lookup is far cheaper than the checks. Bounded: emptied past MAX_SEEN."""

    def __init__(self, convert: Callable[[str], str]) -> None:
        super().__init__()
        self._convert = convert

    def __missing__(self, text: str) -> str:
        if len(self) >= MAX_SEEN:
            self.clear()
        value = self[text] = self._convert(text)
        return value


MAX_SEEN = 4096


def text_lines(batch: list[Entry]) -> str:
    """Many text lines at once: what the writer runs (text_line is the same for one)."""
    seen, second, stamp = _Seen(_escape), -1, ""
    lines = []
    for (
        t,
        client,
        method,
        target,
        status,
        size,
        duration,
        backend,
        attempts,
        cache,
        sticky,
    ) in batch:
        if int(t) != second:
            second = int(t)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        lines.append(
            '%s.%03dZ %s "%s %s" %d %d %.1f %s %d %s %s\n'  # noqa: UP031 (faster than f"")
            % (
                stamp,
                (t - second) * 1000,
                seen[client],
                seen[method],
                target if _plain(target) and " " not in target else _escape(target),
                status,
                size,
                duration * 1000,
                seen[backend],
                attempts,
                cache,
                sticky,
            )
        )
    return "".join(lines)


JSON_LINE = (
    '{"time":"%s.%03dZ","client":%s,"method":%s,"target":%s,"status":%d,"bytes":%d,'
    '"duration_ms":%.3f,"backend":%s,"attempts":%d,"cache":"%s","sticky":"%s"}\n'
)


def json_lines(batch: list[Entry]) -> str:
    seen, second, stamp = _Seen(_json_text), -1, ""
    lines = []
    for (
        t,
        client,
        method,
        target,
        status,
        size,
        duration,
        backend,
        attempts,
        cache,
        sticky,
    ) in batch:
        if int(t) != second:
            second = int(t)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        lines.append(
            JSON_LINE
            % (
                stamp,
                (t - second) * 1000,
                seen[client],
                seen[method],
                f'"{target}"' if _plain(target) else json.dumps(target),
                status,
                size,
                duration * 1000,
                seen[backend],
                attempts,
                cache,
                sticky,
            )
        )
    return "".join(lines)


FORMATS: dict[str, Callable[[list[Entry]], str]] = {"text": text_lines, "json": json_lines}


def chunks(data: bytes, size: int = CHUNK) -> list[bytes]:
    """`data` (whole lines) cut at line ends into pieces of at most `size` bytes where it can
    be (a longer line is a piece of its own)."""
    pieces: list[bytes] = []
    start = 0
    while start < len(data):
        end = start + size
        if end >= len(data):
            pieces.append(data[start:])
            break
        cut = data.rfind(b"\n", start, end) + 1
        if cut <= start:  # one line longer than size
            cut = data.find(b"\n", end) + 1 or len(data)
        pieces.append(data[start:cut])
        start = cut
    return pieces


def write_all(fd: int, data: bytes) -> None:
    for piece in chunks(data):
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]


def open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class AccessLog:
    """One per process; `configure` after a reload, `reopen` on SIGUSR1."""

    def __init__(self, format: str, path: str, *, max_pending: int = MAX_PENDING) -> None:
        self.format, self.path = format, path
        self.max_pending = max_pending
        self._pending: list[Entry] = []
        self._wake = asyncio.Event()
        self._reopen = False
        self._fd: int | None = None  # the file's; None: stderr
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    @property
    def on(self) -> bool:
        return self.format in FORMATS

    def entry(self, entry: Entry) -> None:
        """The request path's whole cost: append, and wake the writer when many wait."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            if not self.dropped:
                log.warning("access log behind by %d lines: dropping new ones", self.max_pending)
            self.dropped += 1
            return
        pending.append(entry)
        if len(pending) == FLUSH_AT:
            self._wake.set()

    def open(self) -> None:
        """At start, before serving: a path that cannot be opened is the start's error."""
        if self.on and self.path != "-":
            self._fd = open_append(self.path)

    def configure(self, format: str, path: str) -> None:
        """A reload: a new format applies to the lines written from now; the file reopens."""
        self.format = format
        if path != self.path:
            self.path = path
        self._reopen = True
        self._wake.set()

    def reopen(self) -> None:
        self._reopen = True
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self._pending = self._pending, []
        reopen, self._reopen = self._reopen, False
        if not batch and not reopen:
            return
        try:
            await asyncio.to_thread(self._write, batch, reopen, FORMATS.get(self.format))
        except OSError as exc:
            log.error("access log %s: %s (%d lines lost)", self.path, exc, len(batch))
        if self.dropped:
            log.warning("access log: %d lines dropped while the writer was behind", self.dropped)
            self.dropped = 0

    def _write(
        self, batch: list[Entry], reopen: bool, lines: Callable[[list[Entry]], str] | None
    ) -> None:
        """In the writer thread: reopen if asked, format, write."""
        if reopen:
            old, self._fd = self._fd, None
            if old is not None:
                os.close(old)
            if self.on and self.path != "-":
                self._fd = open_append(self.path)
        if not batch or lines is None:
            return
        data = lines(batch).encode("utf-8", "surrogateescape")
        write_all(self._fd if self._fd is not None else sys.stderr.fileno(), data)
        self.written += len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.flush()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
