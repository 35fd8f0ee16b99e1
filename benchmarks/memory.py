#!/usr/bin/env python3
"""Flat-memory check: big uploads and downloads through the balancer (SPEC section 4).

    .venv/bin/python benchmarks/memory.py [--size 1GiB] [--limit-mb 50]

Starts benchmarks/backend.py (aiohttp) and `balancer -c tmp.yaml` in front of it, then streams,
through the balancer, with a client that never holds a body:
  download chunked     GET /big?size=N       (no Content-Length)
  download length      GET /big?size=N&cl=1  (Content-Length: N)
  upload chunked       POST /sink            (Transfer-Encoding: chunked)
  upload length        POST /sink            (Content-Length: N)
while a thread samples the balancer's VmRSS every 100 ms. "before" is the RSS after a small
warm-up transfer each way (the first request sets up pools and buffers). PASS when every
transfer moved exactly N bytes and peak - before stays under --limit-mb. Exit 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import HERE, Procs, balancer_argv, free_port, wait_listen_line, wait_ready

CHUNK = 64 * 1024
ZEROS = bytes(CHUNK)
MIB = 1024 * 1024
UNITS = {"": 1, "B": 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024 * 1024 * MIB}


def parse_size(text: str) -> int:
    """`1GiB`, `1GB`, `100MB`, `512K`, `1048576` (powers of 1024, like the SPEC's sizes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


class RssSampler:
    """VmRSS of one pid every `interval` seconds, in a thread (the client's loop stays busy)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read_kb(self) -> int:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak_kb = max(self.peak_kb, self.read_kb())
                self.samples += 1
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.peak_kb = self.read_kb()

    def __enter__(self) -> RssSampler:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def zeros(size: int) -> AsyncIterator[bytes]:
    left = size
    while left > 0:
        n = min(left, CHUNK)
        yield ZEROS if n == CHUNK else ZEROS[:n]
        left -= n


async def download(session: aiohttp.ClientSession, base: str, size: int, cl: bool) -> int:
    url = f"{base}/big?size={size}" + ("&cl=1" if cl else "")
    got = 0
    async with session.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status} {await resp.text()!r}")
        has_cl = "Content-Length" in resp.headers
        if has_cl != cl:
            print(f"  note: Content-Length in response: {has_cl}, asked for {cl}")
        async for chunk in resp.content.iter_any():
            got += len(chunk)
    return got


async def upload(session: aiohttp.ClientSession, base: str, size: int, cl: bool) -> int:
    headers = {"Content-Type": "application/octet-stream"}
    if cl:
        headers["Content-Length"] = str(size)
    async with session.post(f"{base}/sink", data=zeros(size), headers=headers) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"POST /sink: {resp.status} {text[:200]!r}")
        return int(text)


async def transfers(base: str, size: int, sampler: RssSampler, limit_kb: int) -> bool:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
    ok = True
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        # Warm-up both ways, then the baseline.
        await download(session, base, 4 * MIB, cl=False)
        await upload(session, base, 4 * MIB, cl=False)
        await asyncio.sleep(0.3)
        before = sampler.read_kb()
        print(f"balancer RSS before: {before / 1024:.1f} MiB (after a 4 MiB warm-up each way)")
        print()
        print("| transfer | bytes ok | seconds | MiB/s | peak RSS | growth | |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
        overall_peak = before
        for label, fn, cl in (
            ("download, chunked", download, False),
            ("download, Content-Length", download, True),
            ("upload, chunked", upload, False),
            ("upload, Content-Length", upload, True),
        ):
            sampler.reset()
            t0 = time.monotonic()
            try:
                moved = await fn(session, base, size, cl)
                error = ""
            except (aiohttp.ClientError, RuntimeError, ValueError, TimeoutError) as e:
                moved, error = -1, f"{type(e).__name__}: {e}"
            secs = time.monotonic() - t0
            peak = max(sampler.peak_kb, sampler.read_kb())
            overall_peak = max(overall_peak, peak)
            growth = peak - before
            good = moved == size and growth < limit_kb
            ok = ok and good
            print(
                f"| {label} | {'yes' if moved == size else f'NO ({moved})'} | {secs:.1f} "
                f"| {size / MIB / secs:.0f} | {peak / 1024:.1f} MiB | {growth / 1024:+.1f} MiB "
                f"| {'PASS' if good else 'FAIL'} |"
            )
            if error:
                print(f"  error: {error}")
        print()
        print(
            f"overall: before {before / 1024:.1f} MiB, peak {overall_peak / 1024:.1f} MiB, "
            f"growth {(overall_peak - before) / 1024:+.1f} MiB (limit {limit_kb / 1024:.0f} MiB), "
            f"{sampler.samples} samples"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("1GiB"), help="e.g. 100MB")
    ap.add_argument("--limit-mb", type=float, default=50, help="allowed RSS growth, MiB")
    args = ap.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="balancer-mem-") as tmpdir:
        procs = Procs(Path(tmpdir))
        try:
            bport = free_port()
            backend = procs.start(
                "backend", [sys.executable, str(HERE / "backend.py"), str(bport), "big"]
            )
            wait_ready(backend, f"http://127.0.0.1:{bport}/health")
            cfg = Path(tmpdir) / "balancer.yaml"
            cfg.write_text(
                "listen: 127.0.0.1:0\nlog_level: warning\nadmin: {listen: 127.0.0.1:0}\n"
                f"backends:\n  - url: http://127.0.0.1:{bport}\n"
            )
            bal = procs.start("balancer", balancer_argv(cfg), cwd=HERE.parent)
            port = wait_listen_line(bal)
            wait_ready(bal, f"http://127.0.0.1:{port}/health")
            print(
                f"{args.size:,} bytes ({args.size / MIB:.0f} MiB) per transfer through balancer "
                f"pid {bal.popen.pid} to benchmarks/backend.py; VmRSS sampled every 100 ms"
            )
            with RssSampler(bal.popen.pid) as sampler:
                ok = asyncio.run(
                    transfers(
                        f"http://127.0.0.1:{port}", args.size, sampler, int(args.limit_mb * 1024)
                    )
                )
            if not bal.alive():
                print(f"balancer died:\n{bal.tail()}")
                ok = False
            print("PASS" if ok else "FAIL")
            return 0 if ok else 1
        except RuntimeError as e:
            print(f"FAIL: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
