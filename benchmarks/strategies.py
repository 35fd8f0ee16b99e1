#!/usr/bin/env python3
"""Strategies under heterogeneous backends: latency, errors and share per backend, per strategy.

    .venv/bin/python benchmarks/strategies.py [--duration 10] [--concurrency 16]
        [--scenarios slow,recovering,errors] [--strategies round_robin,p2c,...]
        [--json FILE] [--png benchmarks/results/strategies.png]

Three scenarios, each run once per strategy with a fresh balancer and fresh backends, the same
seed and the same workload (a closed loop of C aiohttp clients, `X-User: user-<i % 1000>`):

  slow        b1, b2 answer in ~2 ms, b3 in ~10 ms (5x slower)
  recovering  all ~2 ms; b3 turns 10x slower from 2 s to 6 s (POST /slow?on=1|0), then recovers
  errors      all ~2 ms; b3 answers 500 to 1 % of requests (seeded)

Per scenario a table: requests, p50 / p99 / mean latency, error %, share per backend; then the
goals: `slow`: p99 of response_time, adaptive, p2c <= 0.5 x round_robin's; `recovering`: b3's
share in the first second after it recovers <= 1/3 + 10 %. A PNG chart and, with --json, every
number. Exit 0 even when a goal is missed (MISSED), 1 when the harness failed.

The backends are this file too: `strategies.py --backend PORT NAME --delay-ms D ...` (aiohttp on
uvloop; `GET /` sleeps and answers with `X-Backend: NAME`, `GET /health` reports cpu/memory,
`POST /slow?on=1|0` toggles the 10x slow mode).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    HERE,
    REPO,
    Procs,
    balancer_argv,
    free_port,
    machine_info,
    note,
    on_sigterm,
    venv_python,
    wait_listen_line,
    wait_ready,
)

from balancer.config import STRATEGY_NAMES

STRATEGIES = STRATEGY_NAMES  # every strategy the config accepts, in its order
SCENARIOS = ("slow", "recovering", "errors")
BACKENDS = ("b1", "b2", "b3")  # b3 is the odd one in every scenario
ODD = "b3"
SLOW_GOAL_STRATEGIES = ("response_time", "adaptive", "p2c")
SLOW_GOAL = 0.5
HERD_MARGIN = 0.10
BIN = 0.25  # seconds per bin of the share-over-time chart
USERS = 1000
RESULTS = HERE / "results"
CPU_IDLE, CPU_BUSY = 0.2, 0.9


# --------------------------------------------------------------------------- backend process


def backend_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="strategies.py --backend")
    ap.add_argument("port", type=int)
    ap.add_argument("name")
    ap.add_argument("--delay-ms", type=float, default=2.0)
    ap.add_argument("--jitter", type=float, default=0.1, help="delay x uniform(1-j, 1+j)")
    ap.add_argument("--error-rate", type=float, default=0.0)
    ap.add_argument("--slow-factor", type=float, default=10.0, help="delay x this while slow")
    ap.add_argument("--cpu", type=float, default=CPU_IDLE, help="cpu reported on /health")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    import aiohttp.web as web
    import uvloop

    rng = random.Random(f"{args.seed}-{args.name}")
    state = {"slow": False}
    headers = {"X-Backend": args.name, "Content-Type": "text/plain"}
    body = f"hello from {args.name}\n".encode()

    async def root(request: web.Request) -> web.Response:
        delay = args.delay_ms / 1000 * rng.uniform(1 - args.jitter, 1 + args.jitter)
        if state["slow"]:
            delay *= args.slow_factor
        failed = args.error_rate > 0 and rng.random() < args.error_rate
        await asyncio.sleep(delay)
        if failed:
            return web.Response(status=500, body=b"injected error\n", headers=headers)
        return web.Response(body=body, headers=headers)

    async def health(request: web.Request) -> web.Response:
        cpu = CPU_BUSY if state["slow"] else args.cpu
        return web.json_response({"cpu": cpu, "memory": 0.3})

    async def slow(request: web.Request) -> web.Response:
        state["slow"] = request.query.get("on", "1") == "1"
        return web.json_response({"slow": state["slow"]})

    app = web.Application()
    app.router.add_get("/", root)
    app.router.add_get("/health", health)
    app.router.add_post("/slow", slow)

    async def serve() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(serve())
    return 0


# --------------------------------------------------------------------------- scenarios


@dataclass
class BackendSpec:
    name: str
    delay_ms: float
    error_rate: float = 0.0
    cpu: float = CPU_IDLE


@dataclass
class Scenario:
    name: str
    what: str
    backends: list[BackendSpec]
    slow_window: tuple[float, float] | None = None  # b3 slow between these seconds


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    fast = args.fast_ms
    return {
        "slow": Scenario(
            "slow",
            f"b1, b2 ~{fast:g} ms; b3 ~{fast * 5:g} ms (5x slower, reports cpu {CPU_BUSY})",
            [
                BackendSpec("b1", fast),
                BackendSpec("b2", fast),
                BackendSpec("b3", fast * 5, cpu=CPU_BUSY),
            ],
        ),
        "recovering": Scenario(
            "recovering",
            f"all ~{fast:g} ms; b3 x10 slower (cpu {CPU_BUSY}) from {args.slow_window[0]:g} s "
            f"to {args.slow_window[1]:g} s, then recovers",
            [BackendSpec(n, fast) for n in BACKENDS],
            slow_window=args.slow_window,
        ),
        "errors": Scenario(
            "errors",
            f"all ~{fast:g} ms; b3 answers 500 to {args.error_rate:.0%} of requests",
            [
                BackendSpec("b1", fast),
                BackendSpec("b2", fast),
                BackendSpec("b3", fast, error_rate=args.error_rate),
            ],
        ),
    }


def balancer_yaml(strategy: str, ports: list[int], adaptive_weights: str = "") -> str:
    urls = "".join(
        f"  - {{url: 'http://127.0.0.1:{p}', name: {n}}}\n"
        for n, p in zip(BACKENDS, ports, strict=True)
    )
    text = (
        "listen: 127.0.0.1:0\n"
        "admin: {listen: 127.0.0.1:0}\n"
        "log_level: warning\n"
        f"strategy: {strategy}\n"
        "retries: 0\n"
        "health_check: {interval: 1s}\n"
    )
    if strategy == "consistent_hash":
        text += "hash: {on: header, name: X-User}\n"
    if strategy == "adaptive" and adaptive_weights:
        text += f"adaptive: {{weights: {{{adaptive_weights}}}}}\n"
    return text + "backends:\n" + urls


# --------------------------------------------------------------------------- load generator


@dataclass
class Recorder:
    starts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    exceptions: dict[str, int] = field(default_factory=dict)
    events: dict[str, float] = field(default_factory=dict)


async def load(
    url: str,
    backend_urls: dict[str, str],
    scenario: Scenario,
    args: argparse.Namespace,
) -> Recorder:
    """Closed loop: C clients, each sends the next request when its last answer is read.

    Times are seconds from the end of the warm-up (requests before it are not recorded)."""
    import aiohttp

    rec = Recorder()
    counter = 0
    t0 = time.perf_counter() + args.warmup
    end = t0 + args.duration
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:

        async def client() -> None:
            nonlocal counter
            while True:
                start = time.perf_counter()
                if start >= end:
                    return
                i = counter
                counter += 1
                headers = {"X-User": f"user-{i % USERS}"}
                status, who = 0, "-"
                try:
                    async with session.get(url, headers=headers) as resp:
                        await resp.read()
                        status, who = resp.status, resp.headers.get("X-Backend", "-")
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    kind = type(e).__name__
                    rec.exceptions[kind] = rec.exceptions.get(kind, 0) + 1
                done = time.perf_counter()
                if start >= t0:
                    rec.starts.append(start - t0)
                    rec.latencies.append(done - start)
                    rec.statuses.append(status)
                    rec.backends.append(who)

        async def toggle(on: bool, at: float, label: str) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            async with session.post(f"{backend_urls[ODD]}/slow?on={int(on)}") as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"POST /slow on {ODD}: {resp.status}")
            rec.events[label] = time.perf_counter() - t0

        tasks = [client() for _ in range(args.concurrency)]
        if scenario.slow_window is not None:
            tasks.append(toggle(True, scenario.slow_window[0], "slow_on"))
            tasks.append(toggle(False, scenario.slow_window[1], "recovered"))
        await asyncio.gather(*tasks)
    return rec


def run_load(url: str, backend_urls: dict[str, str], sc: Scenario, args: argparse.Namespace):
    import uvloop

    return uvloop.run(load(url, backend_urls, sc, args))


# --------------------------------------------------------------------------- analysis


def percentile(sorted_vals: list[float], p: float) -> float | None:
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(p / 100 * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[k]  # nearest rank


def per_backend_latency(rec: Recorder) -> dict[str, dict[str, float | None]]:
    """p50 / p99 of the requests each backend answered (as the client saw them)."""
    out: dict[str, dict[str, float | None]] = {}
    for b in BACKENDS:
        lat = sorted(x for x, w in zip(rec.latencies, rec.backends, strict=True) if w == b)
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        out[b] = {
            "p50": None if p50 is None else p50 * 1000,
            "p99": None if p99 is None else p99 * 1000,
        }
    return out


def summarise(rec: Recorder, sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    n = len(rec.latencies)
    lat = sorted(rec.latencies)
    errors = sum(1 for s in rec.statuses if s != 200)
    share = {b: 0 for b in (*BACKENDS, "-")}
    for b in rec.backends:
        share[b] = share.get(b, 0) + 1
    out: dict[str, Any] = {
        "requests": n,
        "rps": n / args.duration if args.duration else None,
        "p50_ms": (percentile(lat, 50) or 0) * 1000 if n else None,
        "p99_ms": (percentile(lat, 99) or 0) * 1000 if n else None,
        "mean_ms": statistics.fmean(lat) * 1000 if n else None,
        "errors": errors,
        "error_pct": 100 * errors / n if n else None,
        "statuses": {str(s): rec.statuses.count(s) for s in sorted(set(rec.statuses))},
        "exceptions": rec.exceptions,
        "share": {b: c / n for b, c in share.items() if n and (c or b != "-")},
        "share_per_backend_errors": {
            b: sum(
                1 for s, w in zip(rec.statuses, rec.backends, strict=True) if w == b and s != 200
            )
            for b in BACKENDS
        },
        "events": rec.events,
        "per_backend_ms": per_backend_latency(rec),
    }
    # b3's share per BIN-second bin of request start time, for the chart.
    nbins = int(args.duration / BIN + 0.999)
    tot, odd = [0] * nbins, [0] * nbins
    for s, w in zip(rec.starts, rec.backends, strict=True):
        i = min(nbins - 1, int(s / BIN))
        tot[i] += 1
        odd[i] += w == ODD
    out["timeline"] = {
        "bin_s": BIN,
        "requests": tot,
        "odd": odd,
        "odd_share": [o / t if t else None for o, t in zip(odd, tot, strict=True)],
    }
    if sc.slow_window is not None and "recovered" in rec.events:
        r = rec.events["recovered"]
        on = rec.events.get("slow_on", sc.slow_window[0])
        first = [w for s, w in zip(rec.starts, rec.backends, strict=True) if r <= s < r + 1]
        during = [w for s, w in zip(rec.starts, rec.backends, strict=True) if on + 1 <= s < r]
        out["recovery"] = {
            "recovered_at_s": r,
            "first_second_requests": len(first),
            "first_second_share": first.count(ODD) / len(first) if first else None,
            "share_while_slow": during.count(ODD) / len(during) if during else None,
        }
    return out


# --------------------------------------------------------------------------- one run


def one_run(sc: Scenario, strategy: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    run_dir = tmp / f"{sc.name}-{strategy}"
    run_dir.mkdir()
    procs = Procs(run_dir)
    try:
        ports = [free_port() for _ in sc.backends]
        started = []
        for spec, port in zip(sc.backends, ports, strict=True):
            argv = [
                venv_python(),
                str(Path(__file__).resolve()),
                "--backend",
                str(port),
                spec.name,
                f"--delay-ms={spec.delay_ms}",
                f"--error-rate={spec.error_rate}",
                f"--cpu={spec.cpu}",
                f"--seed={args.seed}",
            ]
            started.append(procs.start(spec.name, argv))
        for proc, port in zip(started, ports, strict=True):
            wait_ready(proc, f"http://127.0.0.1:{port}/health")
        cfg = run_dir / "balancer.yaml"
        cfg.write_text(balancer_yaml(strategy, ports, args.adaptive_weights))
        bal = procs.start("balancer", balancer_argv(cfg), cwd=REPO)
        port = wait_listen_line(bal)
        url = f"http://127.0.0.1:{port}/"
        wait_ready(bal, url)
        backend_urls = {
            s.name: f"http://127.0.0.1:{p}" for s, p in zip(sc.backends, ports, strict=False)
        }
        rec = run_load(url, backend_urls, sc, args)
        for proc in (*started, bal):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} died during the run:\n{proc.tail()}")
        if not rec.latencies:
            raise RuntimeError(f"no request completed:\n{bal.tail()}")
        return summarise(rec, sc, args)
    finally:
        procs.stop_all()


# --------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_tables(results: dict[str, dict[str, Any]], scs: dict[str, Scenario]) -> None:
    for sname, rows in results.items():
        sc = scs[sname]
        print()
        print(f"### {sname}: {sc.what}")
        print()
        head = "| strategy | requests | p50 ms | p99 ms | mean ms | error % | "
        head += " | ".join(BACKENDS) + " |"
        if sc.slow_window:
            head += f" {ODD} 1st s after recovery |"
        print(head)
        print("| --- " + "| ---: " * (head.count("|") - 2) + "|")
        for strategy, r in rows.items():
            if "failed" in r:
                print(f"| {strategy} | FAILED: {r['failed'][:80]} |")
                continue
            shares = " | ".join(f"{100 * r['share'].get(b, 0):.1f} %" for b in BACKENDS)
            line = (
                f"| {strategy} | {r['requests']:,} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | "
                f"{fmt(r['mean_ms'])} | {fmt(r['error_pct'], '.2f')} | {shares} |"
            )
            if sc.slow_window:
                rs = r.get("recovery", {}).get("first_second_share")
                line += f" {fmt(None if rs is None else 100 * rs, '.1f')} % |"
            print(line)


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The two goals of the issue, one line each; printed and returned for the JSON."""
    out: list[dict[str, Any]] = []
    slow = results.get("slow", {})
    rr = slow.get("round_robin", {}).get("p99_ms")
    for s in SLOW_GOAL_STRATEGIES:
        p99 = slow.get(s, {}).get("p99_ms")
        if "slow" not in results or s not in slow:
            continue
        if rr is None or p99 is None:
            out.append({"goal": "slow", "strategy": s, "ok": None, "why": "no round_robin run"})
            continue
        ratio = p99 / rr
        out.append(
            {
                "goal": "slow",
                "strategy": s,
                "ratio": ratio,
                "limit": SLOW_GOAL,
                "ok": ratio <= SLOW_GOAL,
            }
        )
    limit = 1 / len(BACKENDS) + HERD_MARGIN
    for s, r in results.get("recovering", {}).items():
        share = r.get("recovery", {}).get("first_second_share")
        if share is None:
            out.append({"goal": "recovering", "strategy": s, "ok": None, "why": "no data"})
            continue
        out.append(
            {
                "goal": "recovering",
                "strategy": s,
                "share": share,
                "limit": limit,
                "ok": share <= limit,
            }
        )
    return out


def print_goals(gs: list[dict[str, Any]]) -> None:
    if not gs:
        return
    print()
    print("Goals:")
    for g in gs:
        verdict = "n/a" if g["ok"] is None else ("ok" if g["ok"] else "MISSED")
        if g["ok"] is None:
            print(f"  {g['goal']}: {g['strategy']}: {verdict} ({g['why']})")
        elif g["goal"] == "slow":
            print(
                f"  slow: p99 {g['strategy']} / round_robin = {g['ratio']:.2f} "
                f"(goal <= {g['limit']:.2f}): {verdict}"
            )
        else:
            print(
                f"  recovering: {ODD}'s share in its first second back, {g['strategy']}: "
                f"{100 * g['share']:.1f} % (goal <= {100 * g['limit']:.1f} %): {verdict}"
            )
    missed = [g for g in gs if g["ok"] is False]
    print()
    if missed:
        print(
            f"MISSED: {len(missed)} goal(s): "
            + ", ".join(f"{g['goal']}/{g['strategy']}" for g in missed)
        )
    else:
        print("all goals met")


def chart(results: dict[str, dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = results.get("recovering", {})
    panels = 2 if rec else 1
    fig, axes = plt.subplots(panels, 1, figsize=(12, 5 * panels), squeeze=False)
    ax = axes[0][0]
    strategies = [s for s in STRATEGIES if any(s in rows for rows in results.values())]
    width = 0.8 / max(1, len(results))
    colours = {"slow": "tab:red", "recovering": "tab:blue", "errors": "tab:green"}
    for k, (sname, rows) in enumerate(results.items()):
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(strategies))]
        ys = [rows.get(s, {}).get("p99_ms") or 0 for s in strategies]
        bars = ax.bar(xs, ys, width, label=sname, color=colours.get(sname))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(range(len(strategies)), strategies)
    top = max((r.get("p99_ms") or 0 for rows in results.values() for r in rows.values()), default=1)
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title(
        f"p99 latency per strategy and scenario ({args.concurrency} closed-loop clients, "
        f"{args.duration:g} s per run)"
    )
    ax.legend(title="scenario")
    ax.grid(axis="y", alpha=0.3)
    if rec:
        ax = axes[1][0]
        lo, hi = args.slow_window
        ax.axvspan(lo, hi, color="0.9", label=f"{ODD} slow (x10)")
        limit = 1 / len(BACKENDS) + HERD_MARGIN
        ax.axhline(100 * limit, color="tab:red", ls="--", lw=1, label="1/N + 10 %")
        ax.axhline(100 / len(BACKENDS), color="0.5", ls=":", lw=1, label="1/N")
        for s in STRATEGIES:
            r = rec.get(s)
            if not r or "timeline" not in r:
                continue
            tl = r["timeline"]
            xs = [(i + 0.5) * tl["bin_s"] for i in range(len(tl["odd_share"]))]
            ys = [None if v is None else 100 * v for v in tl["odd_share"]]
            ax.plot(xs, ys, marker=".", lw=1.2, label=s)
        ax.set_xlabel("seconds (request start)")
        ax.set_ylabel(f"{ODD}'s share of requests (%)")
        ax.set_title(f"recovering: {ODD}'s share per {BIN * 1000:.0f} ms bin")
        ax.set_ylim(0, 100)
        ax.set_xlim(0, args.duration)
        ax.legend(ncol=3, fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1, help="unrecorded seconds before each run")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop clients")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--fast-ms", type=float, default=10.0, help="base backend delay")
    ap.add_argument(
        "--adaptive-weights",
        default="",
        help="adaptive's weights as YAML items, e.g. 'connections: 0.2, response_time: 0.6'",
    )
    ap.add_argument("--error-rate", type=float, default=0.01, help="b3's 500s in `errors`")
    ap.add_argument("--slow-window", default="2,6", help="START,END seconds b3 is slow")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--png", type=Path, default=RESULTS / "strategies.png")
    args = ap.parse_args(argv)
    for opt, known in (("scenarios", SCENARIOS), ("strategies", STRATEGIES)):
        vals = [s.strip() for s in getattr(args, opt).split(",") if s.strip()]
        bad = [s for s in vals if s not in known]
        if bad or not vals:
            ap.error(f"--{opt}: unknown {', '.join(bad)} (known: {', '.join(known)})")
        setattr(args, opt, vals)
    try:
        lo, hi = (float(x) for x in args.slow_window.split(","))
    except ValueError:
        ap.error("--slow-window: START,END in seconds, e.g. 2,6")
    if not 0 <= lo < hi or hi + 1 > args.duration:
        ap.error("--slow-window: need 0 <= START < END and END + 1 <= --duration")
    args.slow_window = (lo, hi)
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--backend"]:
        return backend_main(argv[1:])
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        note("AIOHTTP_NO_EXTENSIONS is set: aiohttp runs its slow pure-Python parser")
    scs = scenarios(args)
    runs = len(args.scenarios) * len(args.strategies)
    est = runs * (args.duration + args.warmup + 2)
    note(
        f"{runs} runs x {args.duration:g} s (+{args.warmup:g} s warm-up): about {est / 60:.1f} min"
    )
    results: dict[str, dict[str, Any]] = {}
    failed = 0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="balancer-strategies-") as tmpdir:
        try:
            for sname in args.scenarios:
                results[sname] = {}
                for strategy in args.strategies:
                    try:
                        r = one_run(scs[sname], strategy, args, Path(tmpdir))
                    except RuntimeError as e:
                        failed += 1
                        note(f"{sname}/{strategy}: FAILED:\n{e}")
                        results[sname][strategy] = {"failed": str(e)[:2000]}
                        continue
                    results[sname][strategy] = r
                    shares = " ".join(f"{b} {100 * r['share'].get(b, 0):.0f}%" for b in BACKENDS)
                    note(
                        f"{sname}/{strategy}: {r['requests']} req, p99 {r['p99_ms']:.1f} ms, "
                        f"errors {r['error_pct']:.2f} %, {shares}"
                    )
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
    elapsed = time.monotonic() - t_start
    print(
        f"\nbalancer strategies: {args.concurrency} closed-loop clients (Python aiohttp), "
        f"{args.duration:g} s per run after {args.warmup:g} s warm-up, retries 0, "
        f"health checks every 1 s, seed {args.seed}; shares are of all requests"
    )
    print_tables(results, scs)
    gs = goals(results)
    print_goals(gs)
    ok_results = {
        s: {k: v for k, v in rows.items() if "failed" not in v} for s, rows in results.items()
    }
    chart(ok_results, args, args.png)
    print(f"\nchart: {args.png}")
    info = machine_info()
    print(
        f"machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), python "
        f"{info.get('python', '?')}, aiohttp {info.get('aiohttp', '?')}; {info['date']}; "
        f"total {elapsed / 60:.1f} min"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "machine": info,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "scenarios": {n: scs[n].what for n in args.scenarios},
            "results": results,
            "goals": gs,
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        note(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main(sys.argv[1:]))
