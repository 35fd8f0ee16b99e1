"""The README's first command, run as a user runs it: in a terminal, stopped with Ctrl-C.

The command runs under a shell in a real pseudo-terminal (`Terminal`), so Ctrl-C is the
terminal's: b"\\x03" on the master makes the kernel send SIGINT to the whole foreground process
group. After it, nothing may be left: the group gone, the command's status 0, and the ports of
balancer.yaml and of the demo backends free again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from support import eventually

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -e . && "
PORTS = (9001, 9002, 8080, 9090)  # the demo backends, then balancer.yaml's listen and admin
DEMO_LINE = re.compile(r"^(app\d) \(demo backend on 127\.0\.0\.1:(\d+)\): GET /", re.M)


def readme_command() -> str:
    """The first ```sh block of README.md: one line."""
    match = re.search(r"^```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.M | re.S)
    assert match, "README.md has no ```sh block"
    command = match.group(1)
    assert "\n" not in command, f"the first command is not one line: {command!r}"
    return command


def runnable(command: str) -> str:
    """The part after the venv + pip install, on this test's interpreter's bin directory."""
    assert command.startswith(INSTALL), f"does not start with {INSTALL!r}: {command!r}"
    return command.removeprefix(INSTALL).replace(
        ".venv/bin/", str(Path(sys.executable).parent) + "/"
    )


def taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def session_members(sid: int) -> list[int]:
    """Every process of the session, whatever process group it went to."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
    return members


class Terminal:
    """A shell in a pseudo-terminal, as a terminal window runs one.

    bash leads a new session whose controlling terminal is the pty, with job control on
    (`set -m`, as an interactive shell has it): the command runs as the terminal's foreground
    process group, which Ctrl-C signals, and the shell stays after it. Without the shell
    staying, its exit would SIGHUP whatever the command left behind and hide it; with it, a
    leftover keeps running and holding its port, as it does in a real terminal.
    """

    STATUS = re.compile(rb"\[command exited with status (\d+)\]")

    def __init__(self, command: str) -> None:
        self.master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BALANCER_")}
        # The `balancer` script of the venv may import another checkout's package (an editable
        # install): make it, and the demo, this tree's.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        script = f'set -m\n{command}\necho "[command exited with status $?]"\nexec sleep 300\n'
        self.shell = subprocess.Popen(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.output = bytearray()
        os.set_blocking(self.master, False)

    def foreground(self) -> int | None:
        """The command's process group while it has the terminal, else None."""
        with contextlib.suppress(OSError):
            pgid = os.tcgetpgrp(self.master)
            if pgid not in (0, self.shell.pid):
                return pgid
        return None

    def status(self) -> int | None:
        """The command's exit status, once the shell has printed it."""
        self.read()
        match = self.STATUS.search(self.output)
        return int(match.group(1)) if match else None

    def read(self) -> None:
        """Drain what the command wrote (a full pty would block it)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.master, 65536):
                self.output += chunk

    def text(self) -> str:
        self.read()
        return self.output.decode(errors="replace")

    def close(self) -> None:
        """Kill the whole session, leftovers in other process groups included."""
        for pid in session_members(self.shell.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.shell.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def ports_free() -> Iterator[None]:
    busy = [port for port in PORTS if taken(port)]
    if busy:
        pytest.skip(f"port(s) {busy} already in use on 127.0.0.1: the quickstart needs {PORTS}")
    yield


async def through_proxy() -> set[tuple[str, str]]:
    """GET / through the proxy a few times: the demo backends that answered, by name and port."""
    seen: set[tuple[str, str]] = set()
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(4):
            async with session.get("http://127.0.0.1:8080/") as response:
                if response.status == 200:
                    seen.update(DEMO_LINE.findall(await response.text()))
    return seen


@pytest.mark.usefixtures("ports_free")
async def test_readme_first_command_serves_and_ctrl_c_leaves_nothing_behind() -> None:
    terminal = Terminal(runnable(readme_command()))
    try:

        async def both_backends() -> bool:
            assert terminal.status() is None, f"the command ended:\n{terminal.text()}"
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                return await through_proxy() == {("app1", "9001"), ("app2", "9002")}
            return False

        await eventually(both_backends, timeout=30, interval=0.2)
        job = terminal.foreground()
        assert job is not None, f"the command does not have the terminal:\n{terminal.text()}"

        os.write(terminal.master, b"\x03")  # Ctrl-C: SIGINT to the foreground process group
        started = time.monotonic()
        try:
            await eventually(
                lambda: terminal.status() is not None and not group_alive(job),
                timeout=10,
                interval=0.05,
            )
        except AssertionError:
            raise AssertionError(
                f"still running {time.monotonic() - started:.1f}s after Ctrl-C:\n{terminal.text()}"
            ) from None
        assert terminal.status() == 0, terminal.text()
        still = [port for port in PORTS if not refused(port)]
        assert not still, f"port(s) {still} still listening after Ctrl-C:\n{terminal.text()}"
    finally:
        terminal.close()
