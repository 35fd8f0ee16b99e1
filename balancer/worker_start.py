"""What a supervisor hands a worker at start, on its stdin (worker.py). Its own module: the
worker runs as `__main__`, and pickle must find the class under one name on both ends."""

from __future__ import annotations

import dataclasses
import pickle
import struct
from dataclasses import dataclass, field

from balancer.config import Config
from balancer.overrides import NO_OVERRIDES, CommandLine
from balancer.peer_link import Event

LENGTH = struct.Struct("!Q")  # the pickled WorkerStart's length, before it on stdin


@dataclass(frozen=True)
class WorkerStart:
    """What a worker starts from, so that a restarted one serves as the others do."""

    config: Config
    overrides: CommandLine = NO_OVERRIDES
    supervisor_path: str = ""  # the supervisor's Unix socket for breaker changes
    modes: dict[str, str] = field(default_factory=dict)  # backend -> drain | disable
    events: list[Event] = field(default_factory=list)  # where each backend stands


def encode_start(start: WorkerStart) -> bytes:
    """What the supervisor writes on a worker's stdin. `lines` is a read-only mapping proxy,
    which pickle refuses: it travels as a plain dict."""
    config = dataclasses.replace(start.config, lines=dict(start.config.lines))
    data = pickle.dumps(dataclasses.replace(start, config=config))
    return LENGTH.pack(len(data)) + data


def read_start(stream: object) -> WorkerStart:
    read = getattr(stream, "read")  # noqa: B009 (a binary stream)
    (size,) = LENGTH.unpack(read(LENGTH.size))
    start = pickle.loads(read(size))  # from our own supervisor, through a private pipe
    if not isinstance(start, WorkerStart):
        raise TypeError(f"expected a WorkerStart on stdin, got {type(start).__name__}")
    return start
