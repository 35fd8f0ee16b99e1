"""One worker of a supervisor (`python -m balancer.worker`): a fresh interpreter that serves
the proxy on the listening sockets it inherited and its admin app on a private Unix socket.
Both ends are here: how the supervisor starts one and watches it, and what it runs.

A fresh interpreter rather than a fork: uvloop, aiohttp and their threads are never copied
mid-flight. The supervisor writes a WorkerStart (pickled, length-prefixed) on the worker's
stdin: the config as last reloaded, the command line's overrides, the admin API's modes and
where every backend stands, all applied before the worker listens. It keeps that pipe open:
end of file means the supervisor is gone, and the worker stops gracefully instead of serving
on as an orphan nobody supervises.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys

from balancer.worker_start import WorkerStart, encode_start, read_start

log = logging.getLogger("balancer.worker")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


async def start_worker(
    start: WorkerStart, index: int, sockets: list[socket.socket], admin_path: str
) -> asyncio.subprocess.Process:
    """A worker on the supervisor's `sockets`, in a process group of its own (a terminal's
    Ctrl+C is the supervisor's to pass on), with its WorkerStart on its stdin."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(admin_path)  # a killed worker's socket file stays behind
    fds = [sock.fileno() for sock in sockets]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "balancer.worker",
        "--index",
        str(index),
        "--fds",
        ",".join(map(str, fds)),
        "--admin-path",
        admin_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        pass_fds=fds,
        process_group=0,
    )
    assert process.stdin is not None
    process.stdin.write(encode_start(start))  # and kept open: see _ParentWatch
    return process


async def listening(process: asyncio.subprocess.Process) -> bool:
    """Whether the worker printed its `proxy listening` and `admin listening` lines (serve's
    announce); False when it exited first. The caller bounds the wait."""
    assert process.stdout is not None
    seen: set[str] = set()
    while not {"proxy", "admin"} <= seen:
        line = (await process.stdout.readline()).decode(errors="replace")
        if not line:
            return False
        seen.update(w for w in ("proxy", "admin") if line.startswith(f"{w} listening"))
    return True


async def exited(process: asyncio.subprocess.Process) -> int:
    """Its exit status, reading what else it prints meanwhile (nothing, but a full pipe
    must never block it); then its stdin closes."""
    assert process.stdout is not None
    while await process.stdout.read(65536):
        pass
    code = await process.wait()
    if process.stdin is not None:
        process.stdin.close()
    return code


class _PidInName(logging.Filter):
    """`balancer.proxy[12345]: ...`: the log format of a single process, with the worker's
    pid (syslog's `name[pid]`), so the lines of N workers on one stderr can be told apart."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.name = f"{record.name}[{os.getpid()}]"
        return True


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_PidInName())
    logging.basicConfig(level=level, handlers=[handler])


class _ParentWatch(asyncio.Protocol):
    """Stdin, once the Config is read: nothing more comes; end of file is the supervisor
    exiting (even by SIGKILL), and we stop as on SIGTERM."""

    def __init__(self) -> None:
        self.closing = False  # we close it ourselves once serve() returned
        self.gone = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.gone = True
            log.warning("the supervisor is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)


async def _serve(start: WorkerStart, index: int, fds: list[int], admin_path: str) -> int:
    from balancer.server import Joining, serve

    config = start.config

    loop = asyncio.get_running_loop()
    transport, watch = await loop.connect_read_pipe(_ParentWatch, sys.stdin.buffer)
    try:
        sockets = [socket.socket(fileno=fd) for fd in fds]
        # A reload re-reads the file the supervisor read (and checked for what needs a
        # restart), with the same command-line overrides; the worker count stays ours.
        overrides = start.overrides
        return await serve(
            config,
            proxy_sockets=sockets,
            admin_path=admin_path,
            config_path=config.source if config.source != "<string>" else None,
            overrides=lambda reread: dataclasses.replace(overrides(reread), workers=config.workers),
            joining=Joining(index, start.supervisor_path, start.modes, start.events),
        )
    finally:
        watch.closing = True
        transport.close()
        if watch.gone:  # nobody else will tidy the private directory: the last one out does
            for path in (admin_path, start.supervisor_path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(admin_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancer.worker")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--fds", required=True, help="inherited listening sockets, e.g. 3,4")
    parser.add_argument("--admin-path", required=True, help="the Unix socket of our admin app")
    args = parser.parse_args(argv)
    # SIGHUP before serve() takes it over would kill us (its default action); the supervisor
    # passes every SIGHUP on, whenever it comes.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the same: its default would end us
    start = read_start(sys.stdin.buffer)
    config = start.config
    _setup_logging(config.log_level)
    log.debug("worker %d starting", args.index)

    import uvloop

    from balancer.server import StartupError
    from balancer.strategies import UnknownStrategy

    fds = [int(fd) for fd in args.fds.split(",")]
    try:
        return int(uvloop.run(_serve(start, args.index, fds, args.admin_path)))
    except UnknownStrategy as exc:
        print(f"{config.source}: strategy: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"balancer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
