"""The printed report of ``overhead.py``: its tables, every proxy figure beside the
floor's as a ratio, and the aims."""

from __future__ import annotations

import math
from typing import Any

DIRECT, FLOOR, PROXY, NO_CAPTURE = "direct", "floor", "proxy", "no capture"


def ratio(value: float, floor: float) -> float:
    return round(value / floor, 2) if floor > 0 else math.nan


def _latency_lines(title: str, figures: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for q in ("p50", "p99"):
        cells = f"{figures[DIRECT][f'{q}_ms']:>8.3f}{figures[FLOOR][f'overhead_{q}_ms']:>+9.3f}"
        for target in (PROXY, NO_CAPTURE):
            row = figures[target]
            cells += f"{row[f'overhead_{q}_ms']:>+9.3f}{row[f'overhead_{q}_x_floor']:>7.2f}x"
        lines.append(f"  {title + ' ' + q:<32}{cells}")
    return lines


def _rate_line(p: dict[str, Any]) -> str:
    versus = (
        f"{p['p99_x_floor']:>7.2f}x{p['cpu_x_floor']:>6.2f}x"
        if p["target"] in (PROXY, NO_CAPTURE)
        else " " * 15
    )
    return (
        f"  {p['target']:<11}{p['rate']:>5}{p['achieved']:>7.1f}{p['errors']:>5}"
        f"{p['p50_ms']:>8.2f}{p['p99_ms']:>9.2f}{versus}{p['cpu_ms_per_request']:>7.3f}"
        f"{p['cpu_percent']:>6.1f}{p['lag_p99_ms']:>8.2f}"
    )


def _capacity_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    for target in (FLOOR, PROXY):
        steps = " ".join(
            f"{s['rate']}:{'ok' if s['holds'] else 'FAIL'}"
            f"(p99 {s['p99_ms']:.1f}, {s['errors']} err)"
            for s in results["capacity_steps"][target]
        )
        lines.append(f"  {target:<6} held {results['capacity'][target]:>5} req/s   {steps}")
    floor, proxy = results["capacity"][FLOOR], results["capacity"][PROXY]
    lines.append(f"  proxy capacity {ratio(proxy, floor):.2f}x floor")
    return lines


def _throughput_lines(results: dict[str, Any]) -> list[str]:
    t, two = results["throughput"], results.get("two_workers")
    lines = [
        f"  one worker: floor {t[FLOOR]:.1f}   proxy {t[PROXY]:.1f} "
        f"({ratio(t[PROXY], t[FLOOR]):.2f}x floor)   no capture {t[NO_CAPTURE]:.1f}   "
        f"capture cost {t['capture_cost_percent']:.1f}%"
        f"   errors {t['errors']}"
    ]
    if two:
        lines.append(
            f"  --workers 2: floor {two[FLOOR]:.1f}   proxy {two[PROXY]:.1f} "
            f"({ratio(two[PROXY], two[FLOOR]):.2f}x floor)   errors {two['errors']}"
        )
    return lines


def _training_lines(training: dict[str, Any] | None) -> list[str]:
    if not training:
        return ["  not measured (full run or --training)"]
    idle, busy = training["idle"], training["training"]
    return [
        f"  stillroom serve at {training['rate']} req/s, {training['seconds']:g} s a phase: "
        f"idle p50 {idle['p50_ms']:.2f} p99 {idle['p99_ms']:.2f} ms ({idle['errors']} err); "
        f"training p50 {busy['p50_ms']:.2f} p99 {busy['p99_ms']:.2f} ms ({busy['errors']} err)",
        f"  p99 while training {training['p99_ratio']:.2f}x idle; "
        f"the run ({training['run_state']} at the phase's end) went on for "
        f"{100 * training['training_share_of_phase']:.0f}% of the phase",
    ]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"stillroom proxy overhead, {m['date']}, commit {m['commit']}, "
        f"{'quick' if results['quick'] else 'full'} run",
        f"machine: nproc {m['nproc']}, {m['cpu']}, Python {m['python']}; {m['pinned']}",
        "",
        f"{'latency (ms); overhead = target - direct':<34}{'direct':>8}{'floor':>9}"
        f"{'proxy':>9}{'':>8}{'no capt.':>9}",
        *_latency_lines(f"sequential, n={results['n_sequential']}", results["sequential"]),
        *_latency_lines(f"stream 1st chunk, n={results['n_stream']}", results["stream"]),
        "",
        f"open loop, {results['rate_seconds']:g} s a row; "
        "CPU of the server: ms a request, % of a core",
        f"  {'target':<11}{'req/s':>5}{'got/s':>7}{'err':>5}{'p50':>8}{'p99':>9}{'p99':>8}"
        f"{'CPU':>7}{'CPU ms':>7}{'CPU%':>6}{'lag p99':>8}",
        *(_rate_line(p) for p in results["open_loop"]),
        "",
        f"capacity: open-loop steps until one fails, {results['rate_seconds']:g} s a step",
        *_capacity_lines(results),
        "",
        f"saturation, closed loop, 32 in flight, {results['throughput']['seconds']:g} s a target"
        " (req/s)",
        *_throughput_lines(results),
        "",
        "training in progress",
        *_training_lines(results.get("training")),
        "",
        "aims",
    ]
    for aim in results["aims"]:
        mark = "met   " if aim["met"] else "MISSED"
        lines.append(
            f"  [{mark}] {aim['aim']:<30}{aim['value']:>9.2f} {aim['unit']:<7} "
            f"(aim {'>=' if aim['at_least'] else '<='} {aim['limit']:g})"
        )
    return "\n".join(lines)
