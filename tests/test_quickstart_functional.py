"""The README's first command, run as a user runs it: in a terminal, stopped with Ctrl-C;
and the demo backends it runs (`balancer.demo`), with what each signal does to their child.

The command runs under a shell in a real pseudo-terminal (`Terminal`), so Ctrl-C is the
terminal's: b"\\x03" on the master makes the kernel send SIGINT to the whole foreground process
group. After it, nothing may be left: the group gone, the command's status 0, and the ports of
balancer.yaml and of the demo backends free again.
"""

from __future__ import annotations

import asyncio
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

from balancer.demo import FORWARD_AFTER

from support import eventually, free_port

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


# ---------------------------------------------------------------------------------------
# balancer.demo on its own

DEMO = [sys.executable, "-m", "balancer.demo"]
# A child that says on stdout when it is ready and exits with the number of SIGINTs delivered
# to it: `argv[1]` seconds after the first one, or at the second one. Counted from the wakeup
# fd, one byte per delivery: Python's handlers would merge two that come close together.
COUNT_SIGINTS = """
import os, select, signal, sys, time
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGINT, lambda *_: None)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
print("child ready", flush=True)
got, first = 0, 0.0
while got < 2 and not (got and time.monotonic() - first > float(sys.argv[1])):
    if select.select([r], [], [], 0.01)[0]:
        for number in os.read(r, 64):
            if number == signal.SIGINT:
                got, first = got + 1, first or time.monotonic()
sys.exit(got)
"""


async def start_demo(*args: str) -> asyncio.subprocess.Process:
    """The demo as its own session, with no controlling terminal (as under docker without -t);
    returns once it printed its last line of readiness (its own, or the child's)."""
    process = await asyncio.create_subprocess_exec(
        *DEMO, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    ready = "child ready" if "--" in args else f"listening on http://127.0.0.1:{args[-1]}"
    async with asyncio.timeout(20):
        while ready not in (line := (await process.stdout.readline()).decode()):
            assert line, "the demo exited before it was ready"
    return process


async def exit_status(process: asyncio.subprocess.Process, within: float) -> int:
    try:
        async with asyncio.timeout(within):
            return await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"still running {within}s later") from None


async def test_demo_answers_who_it_is_on_loopback_only() -> None:
    one, two = free_port(), free_port()
    demo = await start_demo(str(one), str(two))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{one}/x/y?z=1") as response:
                assert response.status == 200
                assert (
                    await response.text()
                    == f"app1 (demo backend on 127.0.0.1:{one}): GET /x/y?z=1\n"
                )
            async with session.post(f"http://127.0.0.1:{two}/", data=b"body") as response:
                assert response.status == 200
                assert await response.text() == f"app2 (demo backend on 127.0.0.1:{two}): POST /\n"
            for port in (one, two):
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    assert (response.status, await response.text()) == (200, "ok\n")
        # Bound to 127.0.0.1, not 0.0.0.0: another loopback address is refused.
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.2", one))
        demo.send_signal(signal.SIGTERM)
        assert await exit_status(demo, within=5) == 0
        assert refused(one) and refused(two)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()


async def test_demo_forwards_sigterm_and_exits_with_the_childs_status(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(COUNT_SIGINTS)
    port = free_port()
    demo = await start_demo(str(port), "--", sys.executable, str(tmp_path / "child.py"), "60")
    demo.send_signal(signal.SIGTERM)  # the demo alone: the child exits 42 on SIGTERM
    assert await exit_status(demo, within=5) == 42
    assert refused(port)


async def test_demo_forwards_sigint_at_once_without_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(COUNT_SIGINTS)
    demo = await start_demo(str(free_port()), "--", sys.executable, str(tmp_path / "child.py"), "0")
    demo.send_signal(signal.SIGINT)  # the child exits 1 as soon as it gets one
    assert await exit_status(demo, within=FORWARD_AFTER - 2) == 1


def test_demo_exits_with_127_when_the_command_is_missing() -> None:
    done = subprocess.run(
        [*DEMO, str(free_port()), "--", "no-such-command-here"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 127
    assert b"no-such-command-here: command not found" in done.stderr


async def run_in_terminal_with_ctrl_c(tmp_path: Path, after: float) -> tuple[int, float]:
    """Ctrl-C to `demo -- child` in a terminal: the child's SIGINT count, and how long it took."""
    (tmp_path / "child.py").write_text(COUNT_SIGINTS)
    command = f"{sys.executable} -m balancer.demo {free_port()} -- {sys.executable} {tmp_path / 'child.py'} {after}"
    terminal = Terminal(command)
    try:
        await eventually(lambda: "child ready" in terminal.text(), timeout=20)
        os.write(terminal.master, b"\x03")
        started = time.monotonic()
        await eventually(lambda: terminal.status() is not None, timeout=FORWARD_AFTER + 10)
        status = terminal.status()
        assert status is not None
        return status, time.monotonic() - started
    finally:
        terminal.close()


async def test_ctrl_c_in_a_terminal_reaches_the_child_once(tmp_path: Path) -> None:
    """The child got the terminal's SIGINT itself; the demo adds none (the balancer would take
    a second one as "cut the requests in flight")."""
    got, _ = await run_in_terminal_with_ctrl_c(tmp_path, after=1.5)
    assert got == 1


async def test_ctrl_c_in_a_terminal_is_forwarded_when_the_child_lingers(tmp_path: Path) -> None:
    got, took = await run_in_terminal_with_ctrl_c(tmp_path, after=60)
    assert got == 2
    assert FORWARD_AFTER - 0.5 < took < FORWARD_AFTER + 5
