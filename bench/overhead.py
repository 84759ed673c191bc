"""Proxy overhead: the time and CPU stillroom adds to a chat completion, against the floor
of its stack, measured in one run.

A fake teacher (a raw uvicorn ASGI app that answers at once, ``fake_teacher.py``), the
floor (the thinnest FastAPI + httpx pass-through, ``floor.py``) and the stillroom proxy
(capture on into SQLite, and a second one with ``STILLROOM_CAPTURE=false``, "no capture")
each run in a process of their own (``fleet.py``: the servers under test share one pinned
core); this process is the load generator (``loadgen.py``) and sends the same request,
with the same client, to each and to the teacher directly ("direct"). Phases:

- sequential: one request at a time, the targets alternating;
- stream first chunk: time to the first SSE ``data:`` event, alternating the same way;
- open loop: requests launched on a fixed schedule (100, 300, 500 req/s) whether or not
  earlier ones have finished; the server's CPU time over the phase divided by the
  requests it served is its CPU per request;
- capacity: open-loop steps past 500 req/s until one fails (``capacity.py``), for the
  floor and the proxy;
- saturation: closed loop, 32 in flight, floor, proxy and no capture in alternating
  windows; then the floor and the proxy with ``--workers 2`` (on every core);
- training (full run, or ``--training``): ``stillroom serve`` idle and while a student
  trains (``training_load.py``).

How to read it. "direct" is the cost of the client, the loopback and a trivial server;
overhead is a target minus direct, percentile by percentile. Every proxy figure is also
printed as a ratio to the floor's (``x floor``): the floor is what any Python proxy on
this stack pays, so a ratio near 1 means stillroom's own work does not show. "lag p99" is
how late the generator launched requests; when it reaches milliseconds the generator was
starved of CPU and the row is suspect. Percentiles are nearest-rank.

The tables and the aims are printed by ``overhead_report.py``.

Run: ``.venv/bin/python bench/overhead.py [--quick] [--training] [--json FILE]
[--profile FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvloop
from capacity import CAPACITY_RATES, capacity, rate_steps, saturation
from fake_teacher import serve_teacher
from fleet import Fleet, Server, cores, pin_self
from floor import serve_floor
from loadgen import alternating, first_chunk, ms, open_loop, percentile, post_chat
from overhead_report import DIRECT, FLOOR, NO_CAPTURE, PROXY, ratio, report
from profiling import profile
from training_load import start_serve, training_phases

REPO = Path(__file__).resolve().parent.parent
RATES = (100, 300, 500)
UNDER_TEST = (FLOOR, PROXY, NO_CAPTURE)


# --- statistics -------------------------------------------------------------------------


def latency_summary(samples: dict[str, list[float | None]]) -> dict[str, dict[str, float]]:
    """p50, p99 and errors per target; overhead against direct and its ratio to the
    floor's for the others."""
    figures: dict[str, dict[str, float]] = {}
    for name, values in samples.items():
        ok = [v for v in values if v is not None]
        figures[name] = {
            "p50_ms": ms(percentile(ok, 50)),
            "p99_ms": ms(percentile(ok, 99)),
            "errors": len(values) - len(ok),
        }
    for name in UNDER_TEST:
        for q in ("p50", "p99"):
            figures[name][f"overhead_{q}_ms"] = round(
                figures[name][f"{q}_ms"] - figures[DIRECT][f"{q}_ms"], 3
            )
    for name in (PROXY, NO_CAPTURE):
        for q in ("p50", "p99"):
            key = f"overhead_{q}_ms"
            figures[name][f"overhead_{q}_x_floor"] = ratio(figures[name][key], figures[FLOOR][key])
    return figures


def rate_ratios(phases: list[dict[str, Any]]) -> None:
    """Add, to each proxy row, its overhead against direct and its p99 and CPU per request
    as ratios to the floor's at the same rate."""
    rows = {(p["target"], p["rate"]): p for p in phases}
    for phase in phases:
        if phase["target"] == DIRECT:
            continue
        base, floor = rows[(DIRECT, phase["rate"])], rows[(FLOOR, phase["rate"])]
        for q in ("p50", "p99"):
            phase[f"overhead_{q}_ms"] = round(phase[f"{q}_ms"] - base[f"{q}_ms"], 3)
        phase["p99_x_floor"] = ratio(phase["p99_ms"], floor["p99_ms"])
        phase["cpu_x_floor"] = ratio(phase["cpu_ms_per_request"], floor["cpu_ms_per_request"])


def machine() -> dict[str, Any]:
    servers, others = cores()
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
        "nproc": len(servers | others),
        "pinned": f"servers on CPU {sorted(servers)}, generator and teacher on {sorted(others)}",
        "cpu": models[0] if models else platform.processor(),
        "python": platform.python_version(),
        "commit": commit or None,
    }


def aims(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(p["target"], p["rate"]): p for p in results["open_loop"]}
    at_most: list[tuple[str, float, float, str]] = [
        (f"p99 at {rate} req/s", rows[(PROXY, rate)]["p99_x_floor"], 1.5, "x floor")
        for rate in RATES
    ]
    errors = sum(rows[(PROXY, rate)]["errors"] for rate in RATES)
    at_most.append(("errors up to 500 req/s", errors, 0, ""))
    cost = results["throughput"]["capture_cost_percent"]
    at_most.append(("throughput cost of capture", cost, 5, "%"))
    if results.get("training"):
        at_most.append(("p99 while training", results["training"]["p99_ratio"], 1.5, "x idle"))
    checks: list[dict[str, Any]] = [
        {"aim": name, "value": value, "limit": limit, "unit": unit, "at_least": False}
        for name, value, limit, unit in at_most
    ]
    held = results["capacity"][PROXY]
    checks.append(
        {
            "aim": "capacity, one worker",
            "value": held,
            "limit": 800,
            "unit": "req/s",
            "at_least": True,
        }
    )
    for check in checks:
        value, limit = float(check["value"]), float(check["limit"])
        check["met"] = value >= limit if check["at_least"] else value <= limit
    return checks


# --- measurement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    n_sequential: int
    n_stream: int
    rate_seconds: float
    throughput_seconds: float
    training_seconds: float

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 300, 150, 2.0, 3.0, 4.0)
        return cls(False, 2000, 800, 5.0, 6.0, 8.0)


async def measure(plan: Plan, servers: dict[str, Server]) -> dict[str, Any]:
    sequential = await alternating(post_chat, servers, plan.n_sequential, warm=100)
    stream = await alternating(first_chunk, servers, plan.n_stream, warm=20)
    phases = []
    for rate in RATES:
        for target, server in servers.items():
            phases.append(asdict(await open_loop(target, server, rate, plan.rate_seconds)))
    rate_ratios(phases)
    steps = {
        t: await rate_steps(t, servers[t], CAPACITY_RATES, plan.rate_seconds)
        for t in (FLOOR, PROXY)
    }
    held = {t: capacity(steps[t], RATES[-1]) for t in (FLOOR, PROXY)}
    throughput: dict[str, Any] = await saturation(
        {t: servers[t] for t in UNDER_TEST}, plan.throughput_seconds
    )
    throughput["seconds"] = plan.throughput_seconds
    throughput["capture_on"], throughput["capture_off"] = throughput[PROXY], throughput[NO_CAPTURE]
    throughput["capture_cost_percent"] = round(
        100 * (1 - throughput[PROXY] / throughput[NO_CAPTURE]), 2
    )
    return {
        "quick": plan.quick,
        "n_sequential": plan.n_sequential,
        "n_stream": plan.n_stream,
        "rate_seconds": plan.rate_seconds,
        "sequential": latency_summary(sequential),
        "stream": latency_summary(stream),
        "open_loop": phases,
        "capacity_steps": steps,
        "capacity": held,
        "throughput": throughput,
    }


def run(args: argparse.Namespace) -> None:
    plan = Plan.of(args.quick)
    pin_self()
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-") as tmp, Fleet(Path(tmp)) as fleet:
        teacher = fleet.teacher()
        servers = {
            DIRECT: teacher,
            FLOOR: fleet.floor(teacher),
            PROXY: fleet.proxy(teacher, capture=True),
            NO_CAPTURE: fleet.proxy(teacher, capture=False),
        }
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = {"machine": machine(), **runner.run(measure(plan, servers))}
            for name in UNDER_TEST:
                fleet.stop(servers[name])
            two = {
                FLOOR: fleet.floor(teacher, workers=2),
                PROXY: fleet.proxy(teacher, capture=True, workers=2),
            }
            results["two_workers"] = runner.run(saturation(dict(two), plan.throughput_seconds))
            for server in two.values():
                fleet.stop(server)
            if args.training or not args.quick:
                serve, student_url = start_serve(fleet, teacher)
                phases = training_phases(serve, student_url, plan.training_seconds)
                results["training"] = runner.run(phases)
                fleet.stop(serve)
            results["aims"] = aims(results)
            print(report(results), flush=True)
            if args.json is not None:
                args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
            if args.profile is not None:
                proxy = fleet.proxy(teacher, capture=True)
                out = args.profile.resolve()
                print("\n" + profile(runner, proxy, plan.rate_seconds, out), flush=True)


# --- main -------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What the stillroom proxy adds to a request.")
    parser.add_argument("--quick", action="store_true", help="smoke run, about two minutes")
    parser.add_argument(
        "--training", action="store_true", help="measure the training phase in a quick run too"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write figures here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="then sample the proxy with py-spy at 500 req/s; collapsed stacks go here",
    )
    parser.add_argument("--serve-teacher", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_teacher is not None:
        serve_teacher(args.serve_teacher)
        return 0
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.teacher, workers=args.workers)
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
