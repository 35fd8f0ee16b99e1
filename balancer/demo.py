"""Demo backends for the quickstart: `python -m balancer.demo 9001 9002 [-- COMMAND ...]`.

Each port is served on 127.0.0.1 only (aiohttp). Every path answers 200 with one line saying
who answered: `app1 (demo backend on 127.0.0.1:9001): GET /` (the n-th port is `app<n>`, as
the shipped balancer.yaml names them), so round robin shows through the proxy; `/health`
answers `ok`, and so does any other path, `/` included (balancer.yaml probes `/`).

With `-- COMMAND`, the demo starts COMMAND as its child once every port listens, and exits with
the child's status when it ends (128 + N when signal N killed it): the README runs the balancer
that way, so one Ctrl-C stops both and leaves no server behind. Signals:

- SIGINT, when the demo is in its terminal's foreground process group, is most likely the
  terminal's Ctrl-C, which reached the whole group, the child included; the balancer takes a
  second SIGINT as "cut the requests in flight and exit 1". So the demo does not forward it: it
  waits for the child, and forwards SIGINT only if the child is still running `FORWARD_AFTER`
  seconds later (then the signal was the demo's alone). Any other SIGINT (no terminal, as in
  `docker run` without `-t`; or in the background) is forwarded at once.
- SIGTERM (`kill`, `docker stop`) is sent to one process: it is forwarded to the child.
- SIGHUP (the terminal went away) is forwarded as SIGTERM: the balancer takes SIGHUP for a
  reload request and would otherwise stay behind without its backends.

Without a command, the demo serves until SIGINT, SIGTERM or SIGHUP and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

HOST = "127.0.0.1"
FORWARD_AFTER = 5.0
EXIT_FAILURE, EXIT_NOT_FOUND, EXIT_NOT_EXECUTABLE = 1, 127, 126
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def demo_app(name: str, port: int) -> web.Application:
    """One backend: answers every method and path with who it is."""

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(
            text=f"{name} (demo backend on {HOST}:{port}): {request.method} {request.raw_path}\n"
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", whoami)
    return app


def parse_args(argv: Sequence[str]) -> tuple[list[int], list[str]]:
    """The ports, and the command after `--` (none: serve until a signal)."""
    argv = list(argv)
    command: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m balancer.demo",
        description="Demo backends on 127.0.0.1 that answer with their name; with "
        "`-- COMMAND`, run COMMAND and exit with its status when it ends.",
        usage="%(prog)s PORT [PORT ...] [-- COMMAND [ARG ...]]",
    )
    parser.add_argument("ports", nargs="+", type=_port, metavar="PORT")
    args = parser.parse_args(argv)
    if command == []:
        parser.error("no command after --")
    return list(args.ports), command or []


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535, got {text!r}")
    return int(text)


def in_terminal_foreground() -> bool:
    """Whether this process is in the foreground process group of its controlling terminal:
    only then can a SIGINT be the terminal's Ctrl-C, sent to the child as well."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:  # no controlling terminal
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class Demo:
    """The demo servers, their child, and what each signal does to it."""

    def __init__(self, ports: list[int], command: list[str]) -> None:
        self.ports = ports
        self.command = command
        self.runners: list[web.AppRunner] = []
        self.child: asyncio.subprocess.Process | None = None
        self.stopping = asyncio.Event()
        self.forward_timer: asyncio.TimerHandle | None = None

    def on_signal(self, sig: signal.Signals) -> None:
        self.stopping.set()
        if self.child is None or self.child.returncode is not None:
            return
        if sig == signal.SIGINT and in_terminal_foreground():
            # Most likely the terminal's Ctrl-C, which the child got too: give it time.
            if self.forward_timer is None:
                loop = asyncio.get_running_loop()
                self.forward_timer = loop.call_later(FORWARD_AFTER, self.forward, signal.SIGINT)
        elif sig == signal.SIGINT:
            self.forward(signal.SIGINT)
        else:
            self.forward(signal.SIGTERM)

    def forward(self, sig: signal.Signals) -> None:
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(sig)

    async def serve(self) -> None:
        for number, port in enumerate(self.ports, start=1):
            runner = web.AppRunner(
                demo_app(f"app{number}", port), access_log=None, shutdown_timeout=1.0
            )
            await runner.setup()
            self.runners.append(runner)
            await web.TCPSite(runner, HOST, port).start()
            print(f"demo backend app{number} listening on http://{HOST}:{port}", flush=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            try:
                await self.serve()
            except OSError as exc:
                print(f"balancer.demo: cannot listen: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_FAILURE
            if not self.command:
                await self.stopping.wait()
                return 0
            if self.stopping.is_set():  # a signal came while binding: do not start the child
                return 0
            return await self.supervise()
        finally:
            if self.forward_timer is not None:
                self.forward_timer.cancel()
            # The child is gone: a late signal (a second Ctrl-C) must not turn the exit status
            # into a KeyboardInterrupt while the sockets close.
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
            for runner in self.runners:
                await runner.cleanup()

    async def supervise(self) -> int:
        try:
            self.child = await asyncio.create_subprocess_exec(*self.command)
        except FileNotFoundError:
            print(f"balancer.demo: {self.command[0]}: command not found", file=sys.stderr)
            return EXIT_NOT_FOUND
        except PermissionError:
            print(f"balancer.demo: {self.command[0]}: permission denied", file=sys.stderr)
            return EXIT_NOT_EXECUTABLE
        code = await self.child.wait()
        return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    ports, command = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(Demo(ports, command).run())


if __name__ == "__main__":
    sys.exit(main())
