"""Sticky sessions in Redis: throughput with sticky on vs off, side by side in one run.

    python benchmarks/sticky.py [--rounds 3] [--duration 6] [--users 1000]

Two nginx backends, one redis-server on a free port, two balancers in front of the same
backends, both with `redis.url` set: `off` (sticky: off) and `on` (sticky: header mode, so
wrk can carry the key: a Lua script sends `X-Session-Id: u<random 1..users>` on each
request; every new user is a Redis SET, a known one a GETEX unless the near cache has it).
wrk -t1 -c50 against each in turn, interleaved rounds, medians; prints on/off (goal >= 0.8),
the ratio in each round (both ran back to back) and each balancer's CPU time per request.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    Procs,
    balancer_argv,
    free_port,
    nginx_backend_conf,
    note,
    parse_wrk,
    start_nginx,
    wait_listen_line,
    wait_ready,
)

LUA = """
math.randomseed(42)
request = function()
  return wrk.format(nil, nil, {["X-Session-Id"] = "u" .. math.random(%d)})
end
"""


def balancer_config(backends: list[int], redis_port: int, sticky: str) -> str:
    urls = "".join(f"  - url: http://127.0.0.1:{p}\n" for p in backends)
    return (
        "listen: 127.0.0.1:0\nlog_level: warning\nadmin: {listen: 127.0.0.1:0}\n"
        f"redis: {{url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
        f"sticky: {{mode: {sticky}}}\nbackends:\n{urls}"
    )


def wrk(url: str, script: Path, duration: float) -> dict[str, object]:
    argv = ["wrk", "-t1", "-c50", f"-d{duration:g}s", "--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    return dict(parse_wrk(out.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "redis-server"):
        if shutil.which(tool) is None:
            note(f"{tool} is missing: apt-get install {tool}")
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    with tempfile.TemporaryDirectory(prefix="balancer-sticky-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Procs(tmp)
        try:
            ports = [free_port(), free_port()]
            for i, port in enumerate(ports):
                backend = start_nginx(
                    procs, f"backend{i}", nginx_backend_conf(tmp, f"backend{i}", port)
                )
                wait_ready(backend, f"http://127.0.0.1:{port}/")
            redis_port = free_port()
            procs.start(
                "redis",
                [
                    "redis-server",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(tmp),
                ],
            )
            script = tmp / "users.lua"
            script.write_text(LUA % args.users)
            urls = {}
            owners = {}
            for mode, sticky in (("off", "off"), ("on", "header")):
                cfg = tmp / f"{mode}.yaml"
                cfg.write_text(balancer_config(ports, redis_port, sticky))
                proc = procs.start(f"balancer-{mode}", balancer_argv(cfg))
                owners[mode] = proc
                urls[mode] = f"http://127.0.0.1:{wait_listen_line(proc)}/"
                wait_ready(proc, urls[mode])
                wrk(urls[mode], script, 2)  # warm-up (and the first SET of most users)
            rps: dict[str, list[float]] = {"off": [], "on": []}
            p99: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            for round_no in range(1, args.rounds + 1):
                order = ["off", "on"] if round_no % 2 else ["on", "off"]
                for mode in order:
                    cpu_before = owners[mode].cpu_seconds()
                    result = wrk(urls[mode], script, args.duration)
                    if result["errors"] or not result["rps"] or not result["requests"]:
                        note(f"round {round_no} {mode}: errors {result}")
                        return 1
                    spent = owners[mode].cpu_seconds() - cpu_before
                    cpu[mode].append(spent * 1e6 / float(result["requests"]))  # type: ignore[arg-type]
                    rps[mode].append(float(result["rps"]))  # type: ignore[arg-type]
                    p99[mode].append(float(result["p99_ms"] or 0))  # type: ignore[arg-type]
                    note(
                        f"round {round_no}/{args.rounds} sticky {mode}: {result['rps']:,.0f} req/s,"
                        f" {cpu[mode][-1]:.0f} us CPU/request"
                    )
            print(
                f"\nwrk -t1 -c50 -d{args.duration:g}s, {args.rounds} interleaved rounds, medians; "
                f"{args.users} users (X-Session-Id), Redis on loopback\n"
            )
            print("| sticky | req/s | p99 | CPU per request |\n| --- | ---: | ---: | ---: |")
            for mode in ("off", "on"):
                rate, tail = statistics.median(rps[mode]), statistics.median(p99[mode])
                spent = statistics.median(cpu[mode])
                print(f"| {mode} | {rate:,.0f} | {tail:.2f} ms | {spent:.0f} us |")
            ratio = statistics.median(rps["on"]) / statistics.median(rps["off"])
            verdict = "PASS" if ratio >= 0.8 else "MISSED"
            print(f"\nsticky on / off = {ratio:.2f}x (goal >= 0.8) {verdict}")
            # Each round ran both back to back: their ratio cancels the machine's drift.
            per_round = [on / off for on, off in zip(rps["on"], rps["off"], strict=True)]
            each = ", ".join(f"{r:.2f}" for r in per_round)
            print(f"per round: {each}; median {statistics.median(per_round):.2f}x")
            cost = statistics.median(cpu["off"]) / statistics.median(cpu["on"])
            print(f"CPU per request off / on = {cost:.2f}x")
            print(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            return 0
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
