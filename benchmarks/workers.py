#!/usr/bin/env python3
"""Workers: the balancer with 1 and 2 worker processes next to HAProxy with nbthread 1 and 2.

    .venv/bin/python benchmarks/workers.py [--rounds 5] [--duration 6] [--connections 100]

Same backends as run.py (two nginx `return 200`). wrk -t2 (two threads, so that one load
thread is not the limit) against each target in turn, interleaved rounds, medians. On a
2-core machine the load generator and the backends share the CPU with the proxy: a second
worker or thread can only take what wrk and nginx leave, so req/s understates what a second
core gives. CPU per request (the process and all its descendants: the supervisor and its
workers) is the steadier figure: a supervisor in front should cost next to nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import run  # the sibling script: processes, backends, wrk

CLOCK_TICKS = run.CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of `root` and every process below it (workers have their own
    process group, so run.Proc.cpu_seconds would miss them)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (ppid, ticks)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stats[int(stat.parent.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    wanted, total, changed = {root}, 0, True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        total += stats.get(pid, (0, 0))[1]
    return total / CLOCK_TICKS


def haproxy_conf(port: int, backends: list[int], threads: int) -> str:
    return run.haproxy_conf(port, backends).replace("nbthread 1", f"nbthread {threads}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--connections", type=int, default=100)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="balancer-workers-") as tmpdir:
        procs = run.Procs(Path(tmpdir))
        try:
            info: dict[str, object] = {}
            run.start_targets(argparse.Namespace(only=[]), procs, info, {})  # backends only
            backends = info["backend_ports"]
            assert isinstance(backends, list)
            targets: dict[str, tuple[str, run.Proc]] = {}
            for workers in (1, 2):
                cfg = procs.tmp / f"balancer{workers}.yaml"
                cfg.write_text(run.balancer_yaml(backends) + f"workers: {workers}\n")
                proc = procs.start(f"balancer-w{workers}", run.balancer_argv(cfg), cwd=run.REPO)
                port = run.wait_listen_line(proc, timeout=30)
                url = f"http://127.0.0.1:{port}/"
                run.wait_ready(proc, url)
                targets[f"balancer workers {workers}"] = (url, proc)
            for threads in (1, 2):
                port = run.free_port()
                cfg = procs.tmp / f"haproxy{threads}.cfg"
                cfg.write_text(haproxy_conf(port, backends, threads))
                proc = procs.start(f"haproxy-t{threads}", ["haproxy", "-f", str(cfg), "-db"])
                url = f"http://127.0.0.1:{port}/"
                run.wait_ready(proc, url)
                targets[f"haproxy nbthread {threads}"] = (url, proc)
            rows: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
            for url, _ in targets.values():
                run.run_wrk(url, 2, args.connections, 2)  # warm-up
            for index in range(args.rounds):
                for name, (url, proc) in targets.items():
                    before = tree_cpu_seconds(proc.popen.pid)
                    result = run.run_wrk(url, 2, args.connections, args.duration)
                    cpu = tree_cpu_seconds(proc.popen.pid) - before
                    rps, requests = result.get("rps"), result.get("requests")
                    if not isinstance(rps, float) or not isinstance(requests, int) or not requests:
                        raise RuntimeError(f"{name}: wrk failed: {result}")
                    if result.get("errors"):
                        raise RuntimeError(f"{name}: {result['errors']} errors")
                    rows[name].append((rps, cpu / requests * 1e6))
                    run.note(f"round {index + 1} {name}: {rps:,.0f} req/s, "
                             f"{cpu / requests * 1e6:.0f} us CPU/request")
                    time.sleep(0.5)
            print(f"\nwrk -t2 -c{args.connections} -d{args.duration:g}s, {args.rounds} "
                  "interleaved rounds, medians; 2 x nginx backends; one 2-core machine\n")
            print("| target | req/s | CPU per request |\n| --- | ---: | ---: |")
            medians = {}
            for name, values in rows.items():
                rps = statistics.median(v[0] for v in values)
                cpu = statistics.median(v[1] for v in values)
                medians[name] = (rps, cpu)
                print(f"| {name} | {rps:,.0f} | {cpu:.0f} us |")
            w1, w2 = medians["balancer workers 1"], medians["balancer workers 2"]
            h1, h2 = medians["haproxy nbthread 1"], medians["haproxy nbthread 2"]
            print(f"\nbalancer 2 workers / 1 worker: {w2[0] / w1[0]:.2f}x req/s, "
                  f"{w2[1] / w1[1]:.2f}x CPU per request")
            print(f"haproxy 2 threads / 1 thread: {h2[0] / h1[0]:.2f}x req/s, "
                  f"{h2[1] / h1[1]:.2f}x CPU per request")
            print(f"balancer / haproxy: {w1[0] / h1[0]:.2f}x (1 and 1), "
                  f"{w2[0] / h2[0]:.2f}x (2 and 2)")
            return 0
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
