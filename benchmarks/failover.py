#!/usr/bin/env python3
"""Failover: kill one of three backends under steady load, restart it, time the recovery.

    .venv/bin/python benchmarks/failover.py [--duration 20] [--concurrency 8] [--kill-at 5]
        [--restart-at 10] [--interval 1] [--rise 2] [--fall 2] [--failure-threshold 3]
        [--reset-timeout 3] [--json FILE]

Three benchmarks/backend.py backends (b1 b2 b3) and `balancer -c tmp.yaml` in front of them
(round_robin, retries 2, active health checks, circuit breaker). N client loops sharing one
aiohttp ClientSession GET / through the balancer as fast as they can; each answer's body
("hello from NAME: ...") says which backend served it. At --kill-at b2 is SIGKILLed, at
--restart-at it starts again on the same port; the admin API's /status is polled every 100 ms.
The goal (the issue): zero client-visible failures, and b2 serving again within
rise x interval + reset_timeout of its restart. Exit 1 if either is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    HERE,
    REPO,
    Proc,
    Procs,
    balancer_argv,
    free_port,
    note,
    venv_python,
    wait_listen_line,
    wait_ready,
)

NAMES = ("b1", "b2", "b3")
VICTIM = "b2"
NAME_RE = re.compile(rb"^hello from (\S+?): ")
ADMIN_RE = re.compile(r"admin listening on http://(\S+):(\d+)")
STATUS_EVERY = 0.1
SHARE_WINDOW = 5.0


@dataclass
class Run:
    """Everything measured, times in seconds since the load started (t0, monotonic)."""

    t0: float = 0.0
    # (t_end, latency, status or exception name, backend name or "")
    requests: list[tuple[float, float, str, str]] = field(default_factory=list)
    # (t, {name: {state, breaker, requests_total, failures_total}})
    status: list[tuple[float, dict[str, dict[str, Any]]]] = field(default_factory=list)
    status_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    killed_at: float | None = None
    restarted_at: float | None = None  # the new process was spawned
    ready_at: float | None = None  # the new process answered GET /health directly
    load_end: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0


# --------------------------------------------------------------------------- setup


def balancer_config(ports: dict[str, int], args: argparse.Namespace) -> str:
    backends = "".join(
        f"  - {{url: 'http://127.0.0.1:{port}', name: {name}}}\n" for name, port in ports.items()
    )
    return (
        "listen: 127.0.0.1:0\n"
        "log_level: warning\n"
        "admin: {listen: 127.0.0.1:0}\n"
        "strategy: round_robin\n"
        "retries: 2\n"
        f"backends:\n{backends}"
        f"health_check: {{path: /health, interval: {args.interval:g}s, "
        f"timeout: {args.hc_timeout:g}s, rise: {args.rise}, fall: {args.fall}}}\n"
        f"circuit_breaker: {{failure_threshold: {args.failure_threshold}, "
        f"reset_timeout: {args.reset_timeout:g}s}}\n"
    )


def start_backend(procs: Procs, name: str, port: int, label: str | None = None) -> Proc:
    argv = [venv_python(), str(HERE / "backend.py"), str(port), name]
    return procs.start(label or name, argv)


def wait_admin_line(proc: Proc, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            m = ADMIN_RE.search(proc.out.read_text(errors="replace"))
            if m:
                return int(m.group(2))
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name}: no 'admin listening on' line in {timeout:.0f}s")


# --------------------------------------------------------------------------- the run


async def client_loop(session: aiohttp.ClientSession, url: str, run: Run, stop_at: float) -> None:
    timeout = aiohttp.ClientTimeout(total=5)
    while (t := run.now()) < stop_at:
        try:
            async with session.get(url, timeout=timeout) as resp:
                body = await resp.read()
                m = NAME_RE.match(body)
                who = m.group(1).decode() if m else ""
                outcome = str(resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            outcome, who = type(e).__name__, ""
        end = run.now()
        run.requests.append((end, end - t, outcome, who))
        if outcome != "200":
            await asyncio.sleep(0.01)  # a failing balancer must not become a busy loop


async def poll_status(session: aiohttp.ClientSession, url: str, run: Run, stop_at: float) -> None:
    timeout = aiohttp.ClientTimeout(total=1)
    while run.now() < stop_at:
        t = run.now()
        try:
            async with session.get(url, timeout=timeout) as resp:
                doc = await resp.json()
            snap = {
                b["name"]: {
                    "state": b["state"],
                    "breaker": b["breaker"],
                    "requests_total": b["requests_total"],
                    "failures_total": b["failures_total"],
                }
                for b in doc["backends"]
            }
            run.status.append((t, snap))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as e:
            run.status_errors[type(e).__name__] += 1
        await asyncio.sleep(max(0.0, t + STATUS_EVERY - run.now()))


async def kill_and_restart(
    procs: Procs,
    victim: Proc,
    port: int,
    session: aiohttp.ClientSession,
    run: Run,
    args: argparse.Namespace,
) -> None:
    await asyncio.sleep(max(0.0, args.kill_at - run.now()))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(victim.popen.pid, signal.SIGKILL)
    run.killed_at = run.now()
    await asyncio.get_running_loop().run_in_executor(None, victim.popen.wait)
    note(f"t={run.killed_at:.2f}s: {VICTIM} SIGKILLed")

    await asyncio.sleep(max(0.0, args.restart_at - run.now()))
    run.restarted_at = run.now()
    proc = start_backend(procs, VICTIM, port, label=f"{VICTIM}-restarted")
    note(f"t={run.restarted_at:.2f}s: {VICTIM} restarted on port {port}")
    health = f"http://127.0.0.1:{port}/health"
    timeout = aiohttp.ClientTimeout(total=0.5)
    while run.now() < args.duration:
        if not proc.alive():
            note(f"restarted {VICTIM} exited ({proc.popen.returncode}):\n{proc.tail()}")
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with session.get(health, timeout=timeout) as resp:
                if resp.status == 200:
                    run.ready_at = run.now()
                    note(f"t={run.ready_at:.2f}s: restarted {VICTIM} answers /health")
                    return
        await asyncio.sleep(0.02)


async def drive(
    procs: Procs,
    victim: Proc,
    victim_port: int,
    proxy_url: str,
    status_url: str,
    args: argparse.Namespace,
) -> Run:
    run = Run()
    # SIGTERM cancels this task (and with it every loop below): asyncio.run then raises
    # CancelledError, and main cleans up as on Ctrl-C.
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    jar = aiohttp.DummyCookieJar
    async with (
        aiohttp.ClientSession(cookie_jar=jar()) as session,
        aiohttp.ClientSession(cookie_jar=jar()) as side,  # admin polls, readiness probe
    ):
        run.t0 = time.monotonic()
        tasks = [
            asyncio.create_task(client_loop(session, proxy_url, run, args.duration))
            for _ in range(args.concurrency)
        ]
        tasks.append(asyncio.create_task(poll_status(side, status_url, run, args.duration)))
        tasks.append(
            asyncio.create_task(kill_and_restart(procs, victim, victim_port, side, run, args))
        )
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        run.load_end = run.now()
    return run


# --------------------------------------------------------------------------- report


def transitions(run: Run, name: str) -> list[tuple[float, str, str]]:
    """(t, state, breaker) each time b2's pair changed in /status (the first sample too)."""
    out: list[tuple[float, str, str]] = []
    for t, snap in run.status:
        b = snap.get(name)
        if b is None:
            continue
        pair = (b["state"], b["breaker"])
        if not out or out[-1][1:] != pair:
            out.append((t, *pair))
    return out


def attempts_while_dead(run: Run, name: str) -> dict[str, Any]:
    """From /status: b2's failed attempts (failures_total) between kill and restart, and when
    the last one was first seen (100 ms resolution)."""
    kill, restart = run.killed_at, run.restarted_at
    if kill is None:
        return {}
    rows = [(t, s[name]) for t, s in run.status if name in s]
    before = [b for t, b in rows if t <= kill]
    during = [(t, b) for t, b in rows if t > kill and (restart is None or t <= restart)]
    if not before or not during:
        return {}
    base = before[-1]["failures_total"]
    last_change, prev = None, base
    for t, b in during:
        if b["failures_total"] != prev:
            last_change, prev = t, b["failures_total"]
    return {
        "failed_attempts": during[-1][1]["failures_total"] - base,
        "last_failure_seen_at": last_change,
    }


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def analyse(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    reqs = run.requests
    failures = [r for r in reqs if r[2] != "200"]
    kill, restart = run.killed_at, run.restarted_at
    b2 = [r for r in reqs if r[3] == VICTIM and r[2] == "200"]
    last_before = max((r[0] for r in b2 if kill is not None and r[0] <= kill), default=None)
    after_kill = [r[0] for r in b2 if kill is not None and r[0] > kill]
    dead = [t for t in after_kill if restart is None or t <= restart]
    back = [t for t in after_kill if restart is not None and t > restart]
    first_back = min(back, default=None)
    bound = args.rise * args.interval + args.reset_timeout
    recovery = first_back - restart if first_back is not None and restart is not None else None
    window_start = run.load_end - SHARE_WINDOW
    window = [r for r in reqs if r[0] >= window_start and r[2] == "200"]
    share = collections.Counter(r[3] or "?" for r in window)
    lat = [r[1] for r in reqs if r[2] == "200"]
    around = [r[1] for r in reqs if kill is not None and kill <= r[0] <= kill + 2]
    return {
        "requests": len(reqs),
        "seconds": run.load_end,
        "rps": len(reqs) / run.load_end if run.load_end else 0.0,
        "failures": len(failures),
        "failure_kinds": dict(collections.Counter(r[2] for r in failures)),
        "failure_times": [round(r[0], 3) for r in failures],
        "latency_p50_ms": (pct(lat, 0.5) or 0) * 1000,
        "latency_p99_ms": (pct(lat, 0.99) or 0) * 1000,
        "latency_max_ms": max(lat, default=0) * 1000,
        "latency_max_2s_after_kill_ms": max(around, default=0) * 1000,
        "served": dict(collections.Counter(r[3] or "?" for r in reqs if r[2] == "200")),
        "killed_at": kill,
        "restarted_at": restart,
        "ready_at": run.ready_at,
        "last_b2_before_kill": last_before,
        "b2_responses_while_dead": len(dead),
        "last_b2_after_kill": max(dead, default=None),
        "first_b2_after_restart": first_back,
        "recovery_s": recovery,
        "recovery_from_ready_s": (
            first_back - run.ready_at if first_back is not None and run.ready_at else None
        ),
        "bound_s": bound,
        "within_bound": recovery is not None and recovery <= bound,
        "b2_transitions": transitions(run, VICTIM),
        "b2_attempts_while_dead": attempts_while_dead(run, VICTIM),
        "share_window_s": SHARE_WINDOW,
        "share_last_window": {n: share.get(n, 0) / max(1, len(window)) for n in NAMES},
        "status_samples": len(run.status),
        "status_errors": dict(run.status_errors),
    }


def rel(t: float | None, ref: float | None) -> str:
    if t is None:
        return "never"
    if ref is None:
        return f"t={t:.2f}s"
    return f"t={t:.2f}s ({t - ref:+.2f}s)"


def print_report(a: dict[str, Any], args: argparse.Namespace) -> None:
    kill, restart = a["killed_at"], a["restarted_at"]
    print()
    print(
        f"{args.concurrency} client loops, {a['seconds']:.1f} s through the balancer "
        f"(round_robin, retries 2) to 3 x backend.py; {VICTIM} SIGKILLed at t={args.kill_at:g}s, "
        f"restarted at t={args.restart_at:g}s"
    )
    print(
        f"health_check interval {args.interval:g}s timeout {args.hc_timeout:g}s rise {args.rise} "
        f"fall {args.fall}; circuit_breaker failure_threshold {args.failure_threshold} "
        f"reset_timeout {args.reset_timeout:g}s"
    )
    print()
    print(f"requests:        {a['requests']:,} ({a['rps']:,.0f} req/s)")
    fail = a["failures"]
    kinds = ", ".join(f"{k} x{v}" for k, v in sorted(a["failure_kinds"].items()))
    print(f"client failures: {fail}" + (f"  !! {kinds}" if fail else ""))
    if fail:
        times = a["failure_times"]
        shown = ", ".join(f"{t:.2f}" for t in times[:20]) + (" ..." if len(times) > 20 else "")
        print(f"  at t= {shown}")
    print(
        f"latency (200s):  p50 {a['latency_p50_ms']:.1f} ms, p99 {a['latency_p99_ms']:.1f} ms, "
        f"max {a['latency_max_ms']:.0f} ms; max in the 2 s after the kill "
        f"{a['latency_max_2s_after_kill_ms']:.0f} ms"
    )
    served = ", ".join(f"{n} {a['served'].get(n, 0):,}" for n in NAMES)
    print(f"served by:       {served}")
    print()
    print(f"{VICTIM}:")
    print(f"  last response before the kill   {rel(a['last_b2_before_kill'], kill)}")
    print(f"  killed                          {rel(kill, None)}")
    print(
        f"  responses from it after kill    {a['b2_responses_while_dead']}"
        + (f" (last {rel(a['last_b2_after_kill'], kill)})" if a["last_b2_after_kill"] else "")
    )
    dead = a["b2_attempts_while_dead"]
    if dead:
        print(
            f"  failed attempts on it (/status) {dead['failed_attempts']} "
            f"(retried elsewhere or answered 502/504), last one seen "
            f"{rel(dead['last_failure_seen_at'], kill)}"
        )
    print("  /status (state, breaker), relative to the kill:")
    for t, state, breaker in a["b2_transitions"]:
        print(f"    {rel(t, kill):>24}  {state:<10} {breaker}")
    print(f"  restarted (spawned)             {rel(restart, None)}")
    print(f"  answers /health directly        {rel(a['ready_at'], restart)}")
    print(f"  first response after restart   {rel(a['first_b2_after_restart'], restart)}")
    rec, bound = a["recovery_s"], a["bound_s"]
    verdict = "within" if a["within_bound"] else "NOT within"
    rec_s = f"{rec:.2f} s" if rec is not None else "never"
    from_ready = a["recovery_from_ready_s"]
    ready_s = f" ({from_ready:.2f} s after it answered /health)" if from_ready is not None else ""
    print(
        f"  time to recover                 {rec_s}{ready_s}; bound rise x interval + "
        f"reset_timeout = {args.rise} x {args.interval:g} + {args.reset_timeout:g} = "
        f"{bound:g} s: {verdict}"
    )
    print()
    share = ", ".join(f"{n} {v * 100:.1f}%" for n, v in a["share_last_window"].items())
    print(f"share of 200s in the last {a['share_window_s']:g} s: {share}")
    if a["status_errors"]:
        print(f"/status poll errors: {a['status_errors']} ({a['status_samples']} samples)")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20, help="seconds of load")
    ap.add_argument("--concurrency", type=int, default=8, help="client loops")
    ap.add_argument("--kill-at", type=float, default=5, help="SIGKILL b2 at this second")
    ap.add_argument("--restart-at", type=float, default=10, help="start b2 again at this second")
    ap.add_argument("--interval", type=float, default=1, help="health_check.interval, seconds")
    ap.add_argument("--hc-timeout", type=float, default=0.5, help="health_check.timeout, seconds")
    ap.add_argument("--rise", type=int, default=2)
    ap.add_argument("--fall", type=int, default=2)
    ap.add_argument("--failure-threshold", type=int, default=3)
    ap.add_argument("--reset-timeout", type=float, default=3, help="seconds")
    ap.add_argument("--json", type=Path, help="write the raw numbers here")
    args = ap.parse_args(argv)
    if not 0 < args.kill_at < args.restart_at < args.duration:
        ap.error("need 0 < --kill-at < --restart-at < --duration")
    if args.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    bound = args.rise * args.interval + args.reset_timeout
    if args.duration - args.restart_at < bound + SHARE_WINDOW:
        note(
            f"--duration leaves {args.duration - args.restart_at:g}s after the restart, less "
            f"than the bound ({bound:g}s) + the {SHARE_WINDOW:g}s share window"
        )
    return args


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix="balancer-failover-") as tmpdir:
        procs = Procs(Path(tmpdir))
        try:
            ports = {name: free_port() for name in NAMES}
            backends = {name: start_backend(procs, name, port) for name, port in ports.items()}
            for name, proc in backends.items():
                wait_ready(proc, f"http://127.0.0.1:{ports[name]}/health")
            cfg = Path(tmpdir) / "balancer.yaml"
            cfg.write_text(balancer_config(ports, args))
            bal = procs.start("balancer", balancer_argv(cfg), cwd=REPO)
            port = wait_listen_line(bal)
            admin = wait_admin_line(bal)
            proxy_url = f"http://127.0.0.1:{port}/"
            wait_ready(bal, proxy_url)
            note(
                f"backends {ports}, balancer pid {bal.popen.pid} on {proxy_url}, admin :{admin}; "
                f"running {args.duration:g}s"
            )
            run = asyncio.run(
                drive(
                    procs,
                    backends[VICTIM],
                    ports[VICTIM],
                    proxy_url,
                    f"http://127.0.0.1:{admin}/status",
                    args,
                )
            )
            balancer_died = not bal.alive()
            a = analyse(run, args)
            print_report(a, args)
            log = [
                line for line in bal.err.read_text(errors="replace").splitlines() if line.strip()
            ]
            if log:
                print()
                print("balancer log (warnings and up):")
                for line in log[-30:]:
                    print(f"  {line}")
            if balancer_died:
                print(f"balancer died (exit {bal.popen.returncode})")
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                doc = {
                    "args": {k: v for k, v in vars(args).items() if k != "json"},
                    "ports": ports,
                    "summary": a,
                    "requests": [
                        {"t": round(t, 4), "latency": round(lat, 5), "status": s, "backend": b}
                        for t, lat, s, b in run.requests
                    ],
                    "status": [{"t": round(t, 3), "backends": s} for t, s in run.status],
                    "balancer_log": log,
                }
                args.json.write_text(json.dumps(doc, indent=1) + "\n")
                note(f"wrote {args.json}")
            ok = a["failures"] == 0 and a["within_bound"] and not balancer_died
            print()
            print("PASS" if ok else "FAIL")
            return 0 if ok else 1
        except RuntimeError as e:
            print(f"setup failed: {e}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
