#!/usr/bin/env python3
"""Throughput benchmark: balancer against the naive aiohttp proxy, HAProxy and nginx.

    .venv/bin/python benchmarks/run.py [--rounds 5] [--duration 8] [--connections 50]
        [--threads 1] [--only balancer,naive,haproxy,nginx,direct] [--json FILE]

Two nginx `return 200` backends (~110-byte bodies) on loopback; each proxy (one process, one
worker) in front of both; `wrk --latency` against each, rounds interleaved across proxies; the
median per proxy is reported. What and why: benchmarks/README.md. Stdlib only (the proxies under
test run with the project's venv python).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ALL = ("direct", "haproxy", "nginx", "naive", "balancer")  # also the table order
LABELS = {
    "direct": "direct (wrk -> backend 1, no proxy)",
    "haproxy": "haproxy (roundrobin, http-reuse always)",
    "nginx": "nginx (proxy_pass, upstream keepalive 64)",
    "naive": "naive (aiohttp Application + ClientSession)",
    "balancer": "balancer",
}
LISTEN_RE = re.compile(r"(proxy|admin) listening on http://(\S+):(\d+)")
BODY_LEN = 110
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def note(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def venv_python() -> str:
    p = REPO / ".venv" / "bin" / "python"
    return str(p) if p.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def body_for(name: str) -> str:
    head = f"hello from {name}: "
    return head + "x" * (BODY_LEN - 1 - len(head)) + "\n"


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 2000) -> str:
        parts = []
        for p in (self.err, self.out):
            with contextlib.suppress(OSError):
                text = p.read_text(errors="replace").strip()
                if text:
                    parts.append(f"[{p.name}] {text[-n:]}")
        return "\n".join(parts) or "(no output)"

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process group (nginx's workers too), in seconds."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # fields[0] is field 3 (state): pgrp is field 5, utime 14, stime 15.
            if int(fields[2]) == self.popen.pid:
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def status_kb(self, key: str) -> int | None:
        """VmHWM / VmRSS of the process, in kB (None once it is gone)."""
        try:
            for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None


class Procs:
    """Every process we start: own session (process group), output in files, all killed at end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], cwd: Path | None = None) -> Proc:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        out, err = self.tmp / f"{name}.out", self.tmp / f"{name}.err"
        with out.open("wb") as fo, err.open("wb") as fe:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                cwd=cwd or self.tmp,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        live = [p for p in self.procs if p.alive()]
        for p in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.1, deadline - time.monotonic()))
        for p in self.procs:
            # The group too: a leader that exited may have left children behind.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(2)


def http_get_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with NO_PROXY.open(url, timeout=timeout) as resp:
            resp.read()
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_ready(proc: Proc, url: str, timeout: float = 15.0) -> None:
    """Until the port accepts and answers one GET with 200; fail with the process's output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        if http_get_ok(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: no 200 from {url} within {timeout:.0f}s:\n{proc.tail()}")


def wait_listen_line(proc: Proc, timeout: float = 15.0) -> int:
    """The proxy port from the balancer's `proxy listening on http://HOST:PORT` stdout line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for m in LISTEN_RE.finditer(proc.out.read_text(errors="replace")):
                if m.group(1) == "proxy":
                    return int(m.group(3))
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        time.sleep(0.05)
    raise RuntimeError(
        f"{proc.name}: no 'proxy listening on' line in {timeout:.0f}s:\n{proc.tail()}"
    )


# --------------------------------------------------------------------------- configs


def nginx_common(tmp: Path, name: str) -> str:
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/{name}_client_body;
    proxy_temp_path {tmp}/{name}_proxy;
    fastcgi_temp_path {tmp}/{name}_fastcgi;
    uwsgi_temp_path {tmp}/{name}_uwsgi;
    scgi_temp_path {tmp}/{name}_scgi;
"""


def nginx_backend_conf(tmp: Path, name: str, port: int) -> str:
    return (
        nginx_common(tmp, name)
        + f"""    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "{body_for(name)[:-1]}\\n";
        }}
    }}
}}
"""
    )


def nginx_proxy_conf(tmp: Path, name: str, port: int, backends: list[int]) -> str:
    servers = "".join(f"        server 127.0.0.1:{p};\n" for p in backends)
    return (
        nginx_common(tmp, name)
        + f"""    upstream backends {{
{servers}        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )


def haproxy_conf(port: int, backends: list[int]) -> str:
    servers = "".join(f"    server b{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends, 1))
    return f"""global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    balance roundrobin
{servers}"""


def balancer_yaml(backends: list[int]) -> str:
    urls = "".join(f"  - url: http://127.0.0.1:{p}\n" for p in backends)
    return f"""listen: 127.0.0.1:0
log_level: warning
admin: {{listen: 127.0.0.1:0}}
backends:
{urls}"""


def start_nginx(procs: Procs, name: str, conf: str) -> Proc:
    path = procs.tmp / f"{name}.conf"
    path.write_text(conf)
    nginx = shutil.which("nginx") or "nginx"
    errlog = str(procs.tmp / f"{name}.error.log")
    return procs.start(name, [nginx, "-p", str(procs.tmp), "-c", str(path), "-e", errlog])


def balancer_argv(cfg: Path) -> list[str]:
    script = REPO / ".venv" / "bin" / "balancer"
    if script.exists():
        return [str(script), "-c", str(cfg)]
    return [venv_python(), "-m", "balancer", "-c", str(cfg)]


# --------------------------------------------------------------------------- wrk

UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_latency(text: str, pct: str) -> float | None:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
    return float(m.group(1)) * UNIT_MS[m.group(2)] if m else None


def parse_wrk(text: str) -> dict[str, float | int | None]:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = sum(int(g) for g in sock.groups()) if sock else 0
    non = int(non2xx.group(1)) if non2xx else 0
    return {
        "rps": float(rps.group(1)) if rps else None,
        "requests": int(total.group(1)) if total else None,
        "p50_ms": parse_latency(text, "50"),
        "p99_ms": parse_latency(text, "99"),
        "non_2xx_3xx": non,
        "socket_errors": socket_errors,
        "errors": non + socket_errors,
    }


def run_wrk(url: str, threads: int, connections: int, duration: float) -> dict[str, object]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        return {"rps": None, "errors": 1, "wrk_failed": "timeout"}
    result: dict[str, object] = dict(parse_wrk(cp.stdout))
    if cp.returncode != 0 or result["rps"] is None:
        result["wrk_failed"] = (cp.stderr or cp.stdout).strip()[-500:]
        errors = result.get("errors")
        result["errors"] = (errors if isinstance(errors, int) else 0) or 1
    return result


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    probe = (
        "import sys, aiohttp, platform; "
        "print(platform.python_version()); print(aiohttp.__version__)"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cp = subprocess.run(
            [venv_python(), "-c", probe], capture_output=True, text=True, timeout=20
        )
        if cp.returncode == 0:
            info["python"], info["aiohttp"] = cp.stdout.split()[:2]
    for tool, argv in (
        ("nginx", ["nginx", "-v"]),
        ("haproxy", ["haproxy", "-v"]),
        ("wrk", ["wrk", "-v"]),
    ):
        if shutil.which(argv[0]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                m = re.search(r"\d+\.\d+[\w.+~-]*", cp.stdout + cp.stderr)
                info[tool] = f"{tool} {m.group(0) if m else '?'}"
    return info


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} us" if v < 0.1 else f"{v:.2f} ms"


def median_of(rows: list[dict[str, object]], key: str) -> float | None:
    vals = [float(v) for r in rows if isinstance(v := r.get(key), int | float)]
    return statistics.median(vals) if vals else None


def summarise(results: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for name, rows in results.items():
        out[name] = {
            "rounds": len(rows),
            "rps": median_of(rows, "rps"),
            "p50_ms": median_of(rows, "p50_ms"),
            "p99_ms": median_of(rows, "p99_ms"),
            "cpu_us": median_of(rows, "cpu_us"),
            "errors": sum(int(r.get("errors") or 0) for r in rows),  # type: ignore[call-overload]
        }
    return out


def round_ratios(results: dict[str, list[dict[str, object]]], other: str) -> list[float]:
    """balancer / other req/s in each round where both ran: the two ran back to back, so
    a ratio per round cancels the machine's drift better than a ratio of medians."""
    by_round = {r.get("round"): r.get("rps") for r in results.get(other, [])}
    ratios = []
    for row in results.get("balancer", []):
        mine, theirs = row.get("rps"), by_round.get(row.get("round"))
        if isinstance(mine, float) and isinstance(theirs, float) and theirs > 0:
            ratios.append(mine / theirs)
    return ratios


def print_report(
    medians: dict[str, dict[str, object]],
    results: dict[str, list[dict[str, object]]],
    rss: dict[str, int | None],
    info: dict[str, object],
    args: argparse.Namespace,
    skipped: dict[str, str],
) -> None:
    print()
    print(
        f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, "
        f"{args.rounds} interleaved round(s), median per proxy; backends: {info.get('backends')}"
    )
    print()
    print("| proxy | req/s | p50 | p99 | CPU per request | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ALL:
        if name not in medians:
            continue
        m = medians[name]
        rps = m["rps"]
        errors = int(m["errors"])  # type: ignore[call-overload]
        err = f"**{errors} !!**" if errors else "0"
        rps_s = f"{rps:,.0f}" if isinstance(rps, float) else "-"
        p50, p99, cpu = m["p50_ms"], m["p99_ms"], m["cpu_us"]
        cpu_s = f"{cpu:.0f} us" if isinstance(cpu, float) else "-"
        print(
            f"| {LABELS[name]} | {rps_s} | {fmt_ms(p50)} | {fmt_ms(p99)} | {cpu_s} | {err} |"  # type: ignore[arg-type]
        )
    for name, why in skipped.items():
        print(f"| {LABELS[name]} | skipped: {why} | | | | |")
    print()
    bal = medians.get("balancer", {}).get("rps")
    if isinstance(bal, float):
        for other in ("naive", "haproxy", "nginx", "direct"):
            o = medians.get(other, {}).get("rps")
            if isinstance(o, float) and o > 0:
                line = f"balancer / {other} = {bal / o:.2f}x"
                ratios = round_ratios(results, other)
                if len(ratios) > 1:
                    each = ", ".join(f"{r:.2f}" for r in ratios)
                    line += f"  (per round: {each}; median {statistics.median(ratios):.2f}x)"
                print(line)
        cpu_b = medians.get("balancer", {}).get("cpu_us")
        cpu_n = medians.get("naive", {}).get("cpu_us")
        if isinstance(cpu_b, float) and isinstance(cpu_n, float) and cpu_b > 0:
            print(f"naive CPU per request / balancer CPU per request = {cpu_n / cpu_b:.2f}x")
    else:
        naive = medians.get("naive", {}).get("rps")
        for other in ("haproxy", "nginx", "direct"):
            o = medians.get(other, {}).get("rps")
            if isinstance(naive, float) and isinstance(o, float) and o > 0:
                print(f"naive / {other} = {naive / o:.2f}x  (no balancer row)")
    if rss:
        print()
        parts = [f"{n} {kb / 1024:.1f} MB" for n, kb in rss.items() if kb is not None]
        print("peak RSS (VmHWM at the end): " + ", ".join(parts))
    print()
    print(
        f"machine: {info.get('nproc')} CPUs ({info.get('cpu', '?')}), "
        f"python {info.get('python', '?')}, aiohttp {info.get('aiohttp', '?')}, "
        f"{info.get('haproxy', 'no haproxy')}, {info.get('nginx', 'no nginx')}, "
        f"{info.get('wrk', 'no wrk')}; {info['date']}"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=8, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=float, default=2, help="seconds of wrk before round 1")
    ap.add_argument("--only", default=",".join(ALL), help="comma list of " + ",".join(ALL))
    ap.add_argument("--json", type=Path, help="write per-round numbers and medians here")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in ALL]
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)} (known: {', '.join(ALL)})")
    return args


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        note("AIOHTTP_NO_EXTENSIONS is set: aiohttp runs its slow pure-Python parser")
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk): nothing to measure", file=sys.stderr)
        return 2
    info = machine_info()
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="balancer-bench-") as tmpdir:
        procs = Procs(Path(tmpdir))
        try:
            return measure(args, procs, info, skipped)
        except KeyboardInterrupt:
            print("\ninterrupted: cleaning up", file=sys.stderr)
            return 130
        finally:
            procs.stop_all()


def start_targets(
    args: argparse.Namespace, procs: Procs, info: dict[str, object], skipped: dict[str, str]
) -> tuple[dict[str, str], dict[str, Proc]]:
    tmp = procs.tmp
    have_nginx = shutil.which("nginx") is not None
    bports = [free_port(), free_port()]
    backends: list[Proc] = []
    for i, port in enumerate(bports, 1):
        if have_nginx:
            p = start_nginx(procs, f"backend{i}", nginx_backend_conf(tmp, f"backend{i}", port))
        else:
            p = procs.start(
                f"backend{i}", [venv_python(), str(HERE / "backend.py"), str(port), f"backend{i}"]
            )
        backends.append(p)
    if not have_nginx:
        note("nginx not found: backends are benchmarks/backend.py (aiohttp), much slower")
    for p, port in zip(backends, bports, strict=True):
        wait_ready(p, f"http://127.0.0.1:{port}/")
    info["backend_ports"] = bports
    kind = "nginx return 200" if have_nginx else "benchmarks/backend.py (aiohttp fallback)"
    info["backends"] = f"2 x {kind}, {BODY_LEN}-byte body"
    note(f"backends on ports {bports}: {info['backends']}")

    urls: dict[str, str] = {}
    owners: dict[str, Proc] = {}
    for name in ALL:
        if name not in args.only:
            continue
        try:
            if name == "direct":
                urls[name] = f"http://127.0.0.1:{bports[0]}/"
                continue
            if name == "haproxy":
                if not shutil.which("haproxy"):
                    skipped[name] = "haproxy not installed"
                    note("haproxy not installed: skipping its row")
                    continue
                port = free_port()
                cfg = tmp / "haproxy.cfg"
                cfg.write_text(haproxy_conf(port, bports))
                proc = procs.start(
                    name, [shutil.which("haproxy") or "haproxy", "-f", str(cfg), "-db"]
                )
            elif name == "nginx":
                if not have_nginx:
                    skipped[name] = "nginx not installed"
                    note("nginx not installed: skipping its row")
                    continue
                port = free_port()
                proc = start_nginx(
                    procs, "nginx-proxy", nginx_proxy_conf(tmp, "nginx-proxy", port, bports)
                )
            elif name == "naive":
                port = free_port()
                argv = [venv_python(), str(HERE / "naive_proxy.py"), str(port)]
                proc = procs.start(name, argv + [f"http://127.0.0.1:{p}" for p in bports])
            else:  # balancer
                cfg = tmp / "balancer.yaml"
                cfg.write_text(balancer_yaml(bports))
                proc = procs.start(name, balancer_argv(cfg), cwd=REPO)
                port = wait_listen_line(proc)
            url = f"http://127.0.0.1:{port}/"
            wait_ready(proc, url)
        except RuntimeError as e:
            skipped[name] = "failed to start (see stderr)"
            note(f"{name}: failed to start, skipping its row:\n{e}")
            continue
        urls[name] = url
        owners[name] = proc
        note(f"{name} on {url}")
    return urls, owners


def measure(
    args: argparse.Namespace, procs: Procs, info: dict[str, object], skipped: dict[str, str]
) -> int:
    urls, owners = start_targets(args, procs, info, skipped)
    if not urls:
        print("nothing to measure", file=sys.stderr)
        return 2
    names = list(urls)
    est = args.rounds * len(names) * (args.duration + 1) + len(names) * (args.warmup + 1)
    note(f"measuring {', '.join(names)}: about {est / 60:.1f} min")
    if args.warmup > 0:
        for name in names:
            run_wrk(urls[name], args.threads, args.connections, args.warmup)

    results: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    for r in range(args.rounds):
        # Interleaved, and rotated so no proxy always runs first or right after another.
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if name not in urls:
                continue
            owner = owners.get(name)
            cpu_before = owner.cpu_seconds() if owner else 0.0
            res = run_wrk(urls[name], args.threads, args.connections, args.duration)
            requests = res.get("requests")
            if owner is not None and isinstance(requests, int) and requests > 0:
                # CPU per request is steadier than req/s on a noisy machine: the other
                # processes slow the proxy down, they hardly change what a request costs it.
                res["cpu_us"] = (owner.cpu_seconds() - cpu_before) * 1e6 / requests
            res["round"] = r + 1
            results[name].append(res)
            rps = res.get("rps")
            shown = f"{rps:,.0f} req/s" if isinstance(rps, float) else "FAILED"
            cpu = res.get("cpu_us")
            if isinstance(cpu, float):
                shown += f", {cpu:.0f} us CPU/request"
            note(f"round {r + 1}/{args.rounds} {name}: {shown}, errors {res.get('errors')}")
            if "wrk_failed" in res:
                note(f"{name}: wrk: {res['wrk_failed']}")
            if owner is not None and not owner.alive():
                note(f"{name} died (exit {owner.popen.returncode}), dropped:\n{owner.tail()}")
                del urls[name]

    rss = {n: p.status_kb("VmHWM") for n, p in owners.items()}
    medians = summarise(results)
    print_report(medians, results, rss, info, args, skipped)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "urls": urls,
            "skipped": skipped,
            "rounds": results,
            "medians": medians,
            "peak_rss_kb": rss,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        note(f"wrote {args.json}")
    flagged = [n for n, m in medians.items() if m["errors"] or m["rps"] is None]
    flagged += [n for n, why in skipped.items() if why.startswith("failed")]
    if flagged:
        note(f"rows with errors or failed to start: {', '.join(flagged)}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
