"""Proxy overhead: the time and CPU stillroom adds to a chat completion.

A fake teacher (a raw uvicorn ASGI app that answers at once, ``fake_teacher.py``) and the
stillroom proxy in front of it each run in a process of their own; this process is the
load generator (``loadgen.py``) and sends the same request, with the same client (a lean
keep-alive HTTP/1.1 client, see ``loadgen.LoadClient``, with the headers the openai SDK
sends), to the proxy (capture on, and a second one with ``STILLROOM_CAPTURE=false``, "no
capture") and to the teacher directly ("direct"). Phases:

- sequential: one request at a time, proxy and direct alternating;
- stream first chunk: time to the first SSE ``data:`` event, alternating the same way;
- open loop: requests launched on a fixed schedule (100, 300, 500 req/s) whether or not
  earlier ones have finished, so a server that falls behind builds a queue; the server's
  CPU time over the phase divided by the requests it served is its CPU per request;
- throughput: closed loop, 32 requests in flight; a proxy with capture on and one with
  capture off, in alternating windows (on, off, off, on).

How to read it. The fake teacher answers in well under a millisecond, so "direct" is the
cost of the client, the loopback and a trivial server, and overhead (proxy minus direct,
percentile by percentile) is the proxy's own time. All processes share this machine's
cores: the load generator and the fake teacher take CPU the proxy would have to itself in
production, so saturation figures are a lower bound on a small machine. "lag p99" is how
late the generator launched requests; when it reaches milliseconds the generator was
starved of CPU and the rate figures at that row are suspect. Percentiles are nearest-rank.

This module holds the server processes, the measurement plan, the report and the CLI;
``profiling.py`` the optional py-spy profile. Its siblings are imported by name: run as a
script, this folder is first on ``sys.path``.

Run: ``.venv/bin/python bench/overhead.py [--quick] [--json FILE] [--profile FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import orjson
import uvloop
from fake_teacher import serve_teacher
from loadgen import (
    CONCURRENCY,
    SETTLE_SECONDS,
    alternating,
    closed_loop,
    first_chunk,
    ms,
    open_loop,
    percentile,
    post_chat,
)
from profiling import profile

REPO = Path(__file__).resolve().parent.parent
RATES = (100, 300, 500)
DIRECT, PROXY, NO_CAPTURE = "direct", "proxy", "no capture"

# --- processes --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM if the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Fleet:
    """The server processes of one run; all are stopped, in bounded time, on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Server:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        server = Server(name, f"http://127.0.0.1:{port}", process, log)
        self.servers.append(server)
        _wait_healthy(server)
        return server

    def stop(self, server: Server, grace: float = 5.0) -> None:
        self._signal(server, signal.SIGTERM)
        try:
            server.process.wait(grace)
        except subprocess.TimeoutExpired:
            self._signal(server, signal.SIGKILL)
            server.process.wait(2)

    def stop_all(self, grace: float = 5.0) -> None:
        for server in self.servers:
            self._signal(server, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for server in self.servers:
            try:
                server.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(server, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.process.wait(2)

    @staticmethod
    def _signal(server: Server, signum: int) -> None:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.pid, signum)


def _wait_healthy(server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=1.0, trust_env=False).status_code == 200:
                return
        time.sleep(0.1)
    tail = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{server.name} did not become healthy at {server.url}:\n{tail}")


def proxy_env(teacher: Server, workdir: Path, *, capture: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    env |= {
        "STILLROOM_TEACHER_URL": teacher.url + "/v1",
        "STILLROOM_DATABASE_URL": f"sqlite:///{workdir}/bench.db",
        "STILLROOM_DATA_DIR": str(workdir / "data"),
        "STILLROOM_LOG_LEVEL": "warning",
        "STILLROOM_CAPTURE": "true" if capture else "false",
        "NO_PROXY": ",".join(filter(None, ("127.0.0.1", env.get("NO_PROXY")))),
    }
    return env


def start_proxy(fleet: Fleet, teacher: Server, *, capture: bool) -> Server:
    port = free_port()
    argv = [str(Path(sys.executable).parent / "stillroom"), "proxy"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = proxy_env(teacher, fleet.workdir, capture=capture)
    return fleet.start(f"proxy-capture-{'on' if capture else 'off'}", argv, env, port)


# --- statistics and report --------------------------------------------------------------


def latency_summary(samples: dict[str, list[float | None]]) -> dict[str, dict[str, float]]:
    """p50, p99 and errors per target; overhead against direct for the others."""
    figures: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ok = [v for v in values if v is not None]
        figures[name] = {
            "p50_ms": ms(percentile(ok, 50)),
            "p99_ms": ms(percentile(ok, 99)),
            "errors": len(values) - len(ok),
        }
    for name, row in figures.items():
        if name != DIRECT:
            for q in ("p50", "p99"):
                row[f"overhead_{q}_ms"] = round(row[f"{q}_ms"] - figures[DIRECT][f"{q}_ms"], 3)
    return figures


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line
    ]
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": models[0] if models else platform.processor(),
        "python": platform.python_version(),
        "commit": commit or None,
    }


def rate_overheads(phases: list[dict[str, Any]]) -> None:
    """Add, to each proxy row, its overhead against direct at the same rate."""
    direct = {p["rate"]: p for p in phases if p["target"] == DIRECT}
    for phase in phases:
        if phase["target"] != DIRECT:
            base = direct[phase["rate"]]
            for q in ("p50", "p99"):
                phase[f"overhead_{q}_ms"] = round(phase[f"{q}_ms"] - base[f"{q}_ms"], 3)


def aims(results: dict[str, Any]) -> list[dict[str, Any]]:
    at300 = next(p for p in results["open_loop"] if p["rate"] == 300 and p["target"] == PROXY)
    checks = [
        ("sequential overhead p50", results["sequential"][PROXY]["overhead_p50_ms"], 1.5, "ms"),
        ("errors at 300 req/s", at300["errors"], 0, ""),
        ("overhead p99 at 300 req/s", at300["overhead_p99_ms"], 5.0, "ms"),
        ("proxy CPU per request at 300 req/s", at300["cpu_ms_per_request"], 2.0, "ms"),
        ("throughput cost of capture", results["throughput"]["capture_cost_percent"], 10, "%"),
    ]
    return [
        {"aim": name, "value": value, "limit": limit, "unit": unit, "met": value <= limit}
        for name, value, limit, unit in checks
    ]


def _latency_lines(title: str, figures: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for q in ("p50", "p99"):
        cells = f"{figures[DIRECT][f'{q}_ms']:>9.3f}"
        for target in (PROXY, NO_CAPTURE):
            row = figures[target]
            cells += f"{row[f'{q}_ms']:>9.3f}{row[f'overhead_{q}_ms']:>+9.3f}"
        lines.append(f"  {title + ' ' + q:<34}{cells}")
    return lines


def _rate_line(p: dict[str, Any]) -> str:
    overhead = (
        f"{p['overhead_p50_ms']:>+9.3f}{p['overhead_p99_ms']:>+9.3f}"
        if p["target"] != DIRECT
        else " " * 18
    )
    return (
        f"  {p['target']:<11}{p['rate']:>5}{p['achieved']:>7.1f}{p['errors']:>5}"
        f"{p['p50_ms']:>8.2f}{p['p99_ms']:>9.2f}{overhead}{p['cpu_ms_per_request']:>7.3f}"
        f"{p['cpu_percent']:>6.1f}{p['client_cpu_percent']:>6.1f}{p['lag_p99_ms']:>8.2f}"
    )


def report(results: dict[str, Any]) -> str:
    m, tput = results["machine"], results["throughput"]
    lines = [
        f"stillroom proxy overhead, {m['date']}, commit {m['commit']}, "
        f"{'quick' if results['quick'] else 'full'} run",
        f"machine: nproc {m['nproc']}, {m['cpu']}, Python {m['python']}",
        "",
        f"{'latency (ms)':<36}{'direct':>9}{'proxy':>9}{'ovh':>9}{'no capt.':>9}{'ovh':>9}",
        *_latency_lines(f"sequential, n={results['n_sequential']}", results["sequential"]),
        *_latency_lines(f"stream first chunk, n={results['n_stream']}", results["stream"]),
        "",
        f"open loop, {results['rate_seconds']:g} s a row; CPU of the server: ms a request and "
        "% of a core; gen: load generator",
        f"  {'target':<11}{'req/s':>5}{'got/s':>7}{'err':>5}{'p50':>8}{'p99':>9}{'ovh p50':>9}"
        f"{'ovh p99':>9}{'CPU ms':>7}{'CPU%':>6}{'gen%':>6}{'lag p99':>8}",
        *(_rate_line(p) for p in results["open_loop"]),
        "",
        f"throughput, closed loop, {CONCURRENCY} in flight, {tput['seconds']:g} s a target (req/s)",
        f"  direct {tput['direct']:.1f}   proxy capture on {tput['capture_on']:.1f}   "
        f"capture off {tput['capture_off']:.1f}   capture cost {tput['capture_cost_percent']:.1f}%"
        f"   errors {tput['errors']}",
        "",
        "aims",
    ]
    for aim in results["aims"]:
        mark = "met   " if aim["met"] else "MISSED"
        lines.append(
            f"  [{mark}] {aim['aim']:<36}{aim['value']:>9.3f} {aim['unit']:<2} "
            f"(aim <= {aim['limit']:g}{aim['unit']})"
        )
    return "\n".join(lines)


# --- measurement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_sequential: int
    n_stream: int
    rate_seconds: float
    throughput_seconds: float

    @classmethod
    def of(cls, quick: bool) -> Plan:
        return cls(quick, 300, 150, 2.0, 3.0) if quick else cls(False, 2000, 800, 10.0, 10.0)


async def measure(plan: Plan, servers: dict[str, Server]) -> dict[str, Any]:
    sequential = await alternating(post_chat, servers, plan.n_sequential, warm=100)
    stream = await alternating(first_chunk, servers, plan.n_stream, warm=20)
    phases = []
    for rate in RATES:
        for target, server in servers.items():
            phases.append(asdict(await open_loop(target, server, rate, plan.rate_seconds)))
    rate_overheads(phases)
    return {
        "quick": plan.quick,
        "n_sequential": plan.n_sequential,
        "n_stream": plan.n_stream,
        "rate_seconds": plan.rate_seconds,
        "sequential": latency_summary(sequential),
        "stream": latency_summary(stream),
        "open_loop": phases,
        "throughput": await throughput(servers, plan.throughput_seconds),
    }


async def throughput(servers: dict[str, Server], seconds: float) -> dict[str, Any]:
    """Closed-loop rate of the teacher alone, then of the proxy with capture on and off
    in windows on, off, off, on (so a drift in the machine's speed cancels out)."""
    window = seconds / 2
    rates: dict[str, list[float]] = {PROXY: [], NO_CAPTURE: []}
    direct, errors = await closed_loop(servers[DIRECT], window)
    for target in (PROXY, NO_CAPTURE, NO_CAPTURE, PROXY):
        await asyncio.sleep(SETTLE_SECONDS)
        rate, failed = await closed_loop(servers[target], window)
        rates[target].append(rate)
        errors += failed
    on, off = (sum(rates[t]) / len(rates[t]) for t in (PROXY, NO_CAPTURE))
    return {
        "seconds": seconds,
        "direct": round(direct, 1),
        "capture_on": round(on, 1),
        "capture_off": round(off, 1),
        "capture_cost_percent": round(100 * (1 - on / off), 2),
        "errors": errors,
    }


# --- main -------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What the stillroom proxy adds to a request.")
    parser.add_argument("--quick", action="store_true", help="smoke run, under a minute")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then sample the proxy with py-spy at 300 req/s; collapsed stacks go here",
    )
    parser.add_argument("--serve-teacher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    plan = Plan.of(args.quick)
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-") as tmp, Fleet(Path(tmp)) as fleet:
        port = free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-teacher", str(port)]
        teacher = fleet.start("teacher", argv, dict(os.environ), port)
        servers = {
            DIRECT: teacher,
            PROXY: start_proxy(fleet, teacher, capture=True),
            NO_CAPTURE: start_proxy(fleet, teacher, capture=False),
        }
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = {"machine": machine(), **runner.run(measure(plan, servers))}
            results["aims"] = aims(results)
            print(report(results), flush=True)
            if args.json is not None:
                args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
            if args.profile is not None:
                fleet.stop(servers[NO_CAPTURE])
                out = args.profile.resolve()
                print("\n" + profile(runner, servers[PROXY], plan.rate_seconds, out), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_teacher is not None:
        serve_teacher(args.serve_teacher)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
