#!/usr/bin/env python3
"""Live reload under load: requests failed across reloads, and how long a reload takes.

    .venv/bin/python benchmarks/reload.py [--reloads 10] [--connections 50]

Three backends (benchmarks/backend.py, each answering with its own name), the balancer in
front, and wrk keeping `--connections` keep-alive connections busy for the whole run. Meanwhile
the file is rewritten `--reloads` times (alternately adding, removing and re-weighting
backends and switching the strategy), each applied by SIGHUP or POST /reload in turn.

Figures: wrk's errors (non-2xx answers and socket errors) over the whole run, which must be
0; and per reload its latency: from the signal (or the POST) to the first answer from a
backend that only the new config has (a poll on its own keep-alive connection every 2 ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import run  # the sibling script: processes, backends, wrk


def config_text(backends: list[tuple[str, int, int]], strategy: str) -> str:
    lines = "".join(
        f"  - url: http://127.0.0.1:{port}\n    name: {name}\n    weight: {weight}\n"
        for name, port, weight in backends
    )
    return (
        "listen: 127.0.0.1:0\nlog_level: warning\nadmin: {listen: 127.0.0.1:0}\n"
        f"strategy: {strategy}\nbackends:\n{lines}"
    )


def admin_port(proc: run.Proc, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in run.LISTEN_RE.finditer(proc.out.read_text(errors="replace")):
            if m.group(1) == "admin":
                return int(m.group(3))
        time.sleep(0.05)
    raise RuntimeError(f"no admin line:\n{proc.tail()}")


def first_answer_from(port: int, name: str, timeout: float = 10.0) -> float:
    """Poll the proxy until a response comes from backend `name`; the time it came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            conn.request("GET", "/")
            body = conn.getresponse().read()
            if body.startswith(f"hello from {name}:".encode()):
                return time.monotonic()
            time.sleep(0.002)
    finally:
        conn.close()
    raise RuntimeError(f"no answer from {name} within {timeout:g}s")


def post_reload(port: int) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/reload")
        response = conn.getresponse()
        body: dict[str, object] = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"reload refused: {body}")
        return body
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="balancer-reload-") as tmpdir:
        procs = run.Procs(Path(tmpdir))
        try:
            ports = [run.free_port() for _ in range(3)]
            names = ["app0", "app1", "app2"]
            for name, port in zip(names, ports, strict=True):
                script = str(run.REPO / "benchmarks" / "backend.py")
                backend = procs.start(name, [run.venv_python(), script, str(port), name])
                run.wait_ready(backend, f"http://127.0.0.1:{port}/health")
            cfg = Path(tmpdir) / "balancer.yaml"
            a, b, c = ports
            plans = [
                ([("app0", a, 1), ("app1", b, 1)], "round_robin"),
                ([("app0", a, 1), ("app1", b, 1), ("app2", c, 1)], "least_connections"),
                ([("app0", a, 3), ("app2", c, 1)], "weighted"),
                ([("app1", b, 1), ("app2", c, 2)], "p2c"),
            ]
            cfg.write_text(config_text(*plans[0]))
            balancer = procs.start("balancer", run.balancer_argv(cfg))
            port = run.wait_listen_line(balancer)
            admin = admin_port(balancer)
            run.wait_ready(balancer, f"http://127.0.0.1:{port}/")
            duration = 4.0 + args.reloads * 1.0
            load: dict[str, object] = {}
            loader = threading.Thread(
                target=lambda: load.update(
                    run.run_wrk(f"http://127.0.0.1:{port}/", 1, args.connections, duration)
                )
            )
            loader.start()
            time.sleep(2.0)  # wrk's connections are up and busy
            latencies = []
            for index in range(args.reloads):
                backends, strategy = plans[(index + 1) % len(plans)]
                previous = {b[0] for b in plans[index % len(plans)][0]}
                new = [b[0] for b in backends if b[0] not in previous]
                cfg.write_text(config_text(backends, strategy))
                started = time.monotonic()
                if index % 2 == 0:
                    balancer.popen.send_signal(signal.SIGHUP)
                    how = "SIGHUP"
                else:
                    post_reload(admin)
                    how = "POST /reload"
                if new:
                    latency = first_answer_from(port, new[0]) - started
                    latencies.append(latency)
                    ms = latency * 1000
                    run.note(f"reload {index + 1} ({how}): {new[0]} answered after {ms:.1f} ms")
                else:
                    run.note(f"reload {index + 1} ({how}): no backend added")
                time.sleep(0.8)
            loader.join()
            status = json.loads(run.NO_PROXY.open(f"http://127.0.0.1:{admin}/status").read())
            print(f"\nreloads: {status['reloads']}")
            print(f"wrk: {load.get('requests')} requests, {load.get('rps')} req/s, "
                  f"errors {load.get('errors')} (non-2xx {load.get('non_2xx_3xx')}, "
                  f"socket {load.get('socket_errors')})")
            if latencies:
                print(
                    f"reload latency (signal or POST -> first answer from an added backend): "
                    f"median {statistics.median(latencies) * 1000:.1f} ms, "
                    f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} reloads"
                )
            return 0 if load.get("errors") == 0 else 1
        finally:
            procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
