#!/usr/bin/env python3
"""Instructions per request, counted by valgrind (callgrind): the balancer and the naive proxy.

    .venv/bin/python benchmarks/instructions.py [--duration 10] [--only balancer,naive]

req/s on this shared 2-core machine swings by 20-50 % from run to run; the number of machine
instructions a proxy runs per request does not (the same within ~2 % run to run, whatever else
the machine does). It counts user space only (the kernel's share, ~25-30 us of socket work per
request, is left out), so it shows what our own code costs and whether a change made it
cheaper. It is a companion to run.py, not a replacement: the issue's targets are req/s.

Same backends as run.py (two nginx `return 200`, or benchmarks/backend.py without nginx). Each
proxy runs under `valgrind --tool=callgrind --instr-atstart=no`, about 50x slower; after a
warm-up, counting is switched on (`callgrind_control -i on`) for `--duration` seconds of
`wrk -c50`, then off, and the count is divided by the requests wrk completed in that window.
Needs valgrind and wrk (`apt-get install valgrind wrk`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run  # the sibling script: processes, backends, wrk

VALGRIND = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, timeout=60)


def count(
    procs: run.Procs, name: str, argv: list[str], url_of: str | None, duration: float
) -> dict[str, float]:
    out = procs.tmp / f"{name}.callgrind"
    proc = procs.start(name, [*VALGRIND, f"--callgrind-out-file={out}", *argv], cwd=run.REPO)
    port = run.wait_listen_line(proc, timeout=120) if url_of is None else None
    url = url_of or f"http://127.0.0.1:{port}/"
    run.wait_ready(proc, url, timeout=120)
    run.run_wrk(url, 1, 50, 3)  # warm-up, not counted
    pid = proc.popen.pid  # valgrind runs the target in its own process
    control(pid, "-i", "on")
    result = run.run_wrk(url, 1, 50, duration)
    control(pid, "-i", "off")
    control(pid, "-d")
    time.sleep(1)
    proc.popen.terminate()
    proc.popen.wait(30)
    totals = []
    for path in procs.tmp.glob(f"{name}.callgrind*"):
        totals += [int(m) for m in re.findall(r"^totals: (\d+)", path.read_text(), re.M)]
    requests = result.get("requests")
    # Under valgrind a few of wrk's 2 s socket timeouts are expected; a non-2xx is not.
    if not totals or not isinstance(requests, int) or not requests or result.get("non_2xx_3xx"):
        raise RuntimeError(f"{name}: no count ({result}):\n{proc.tail()}")
    total = max(totals)
    return {"requests": requests, "instructions": total, "per_request": total / requests}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds counted per proxy")
    ap.add_argument("--only", default="balancer,naive")
    ap.add_argument("--keep", help="copy the callgrind files here (for callgrind_annotate)")
    ap.add_argument(
        "--extra",
        default="",
        help="YAML added to the balancer's config, e.g. \"access_log: {format: json, path: "
        "/tmp/access.log}\" (the cost of a feature: the same run with and without it)",
    )
    args = ap.parse_args(argv)
    missing = [t for t in ("valgrind", "callgrind_control", "wrk") if not shutil.which(t)]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install valgrind wrk)", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="balancer-instr-") as tmpdir:
        procs = run.Procs(Path(tmpdir))
        try:
            info: dict[str, object] = {}
            run.start_targets(argparse.Namespace(only=[]), procs, info, {})  # backends only
            backends = info["backend_ports"]
            assert isinstance(backends, list)
            results: dict[str, dict[str, float]] = {}
            for name in names:
                if name == "balancer":
                    cfg = procs.tmp / "balancer.yaml"
                    cfg.write_text(run.balancer_yaml(backends) + args.extra + "\n")
                    argv_ = [run.venv_python(), "-m", "balancer", "-c", str(cfg)]
                    results[name] = count(procs, name, argv_, None, args.duration)
                elif name == "naive":
                    port = run.free_port()
                    argv_ = [run.venv_python(), str(run.HERE / "naive_proxy.py"), str(port)]
                    argv_ += [f"http://127.0.0.1:{p}" for p in backends]
                    results[name] = count(
                        procs, name, argv_, f"http://127.0.0.1:{port}/", args.duration
                    )
                else:
                    print(f"unknown: {name}", file=sys.stderr)
                    return 2
                r = results[name]
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    for path in procs.tmp.glob(f"{name}.callgrind*"):
                        shutil.copy(path, Path(args.keep) / path.name)
                run.note(
                    f"{name}: {r['per_request']:,.0f} per request ({r['requests']:.0f} requests)"
                )
        finally:
            procs.stop_all()
    print()
    print("| proxy | user-space instructions per request |")
    print("| --- | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['per_request']:,.0f} |")
    if "balancer" in results and "naive" in results:
        ratio = results["naive"]["per_request"] / results["balancer"]["per_request"]
        print(f"\nbalancer runs {ratio:.2f}x fewer instructions per request than naive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
