"""One table of the figures that ``make bench`` measured: bench/overhead.py,
bench/distill.py and bench/router.py, each run with ``--json`` into one folder.

Run: ``.venv/bin/python bench/summary.py DIR`` (``make bench`` does). Prints Markdown, the
way the README shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KINDS = ("classifier", "lora")


def load(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    if not path.exists():
        return None
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def both(figures: dict[str, Any], key: str, shown: Any) -> str:
    """The classifier's and the LoRA student's figure, side by side."""
    return " / ".join(
        shown(figures[kind][key]) if kind in figures and key in figures[kind] else "-"
        for kind in KINDS
    )


def overhead_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    at300 = next(p for p in results["open_loop"] if p["rate"] == 300 and p["target"] == "proxy")
    tput = results["throughput"]
    return [
        (
            "proxy overhead, sequential p50",
            f"{results['sequential']['proxy']['overhead_p50_ms']:.2f} ms",
        ),
        (
            "proxy overhead p99 at 300 req/s",
            f"{at300['overhead_p99_ms']:.2f} ms, {at300['errors']} errors",
        ),
        ("proxy CPU per request", f"{at300['cpu_ms_per_request']:.2f} ms"),
        ("one worker, closed loop", f"{tput['capture_on']:.0f} req/s"),
        ("throughput cost of capture", f"{tput['capture_cost_percent']:.1f}%"),
    ]


def distill_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    common = figures["common"]
    return [
        (
            "distillation data",
            f"{common['intents']} CLINC150 intents, {common['train']} training pairs, "
            f"{common['heldout']} held out",
        ),
        ("training time", both(figures, "training_seconds", lambda s: f"{s:,.1f} s")),
        ("held-out agreement", both(figures, "student_agreement", percent)),
        (
            f"held-out share at {common['target']:.0%} agreement",
            both(figures, "share_at_target", percent),
        ),
        (
            "time per request",
            "p50 "
            + both(figures, "latency_p50_ms", lambda v: f"{v:.1f}")
            + " ms, p99 "
            + both(figures, "latency_p99_ms", lambda v: f"{v:.1f}")
            + " ms",
        ),
        ("artefact size", both(figures, "artefact_kb", lambda kb: f"{kb / 1e3:.2f} MB")),
        ("peak memory", f"{common['peak_rss_mb']:,.0f} MB"),
    ]


def router_rows(figures: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        (
            "new traffic served at ≥ 95% agreement (confidence gate)",
            both(figures, "share_at_95_confidence", percent),
        ),
        ("agreement on all new traffic", both(figures, "student_agreement_on_all", percent)),
    ]
    classifier = figures.get("classifier") or {}
    if "proxy_student_p50_ms" in classifier:
        rows += [
            (
                "classifier through the proxy: share served, agreement on it",
                f"{percent(classifier['proxy_share_on_student'])}, "
                f"{percent(classifier['proxy_agreement_on_student'])}",
            ),
            (
                "classifier through the proxy: request p50 / p99",
                f"{classifier['proxy_student_p50_ms']:.1f} / "
                f"{classifier['proxy_student_p99_ms']:.1f} ms",
            ),
            (
                "out-of-scope inputs sent to the teacher",
                percent(classifier["proxy_out_of_scope_escalated"]),
            ),
        ]
    lora = figures.get("lora") or {}
    if "decision_p50_us" in lora:
        rows += [
            ("routing decision p50", f"{lora['decision_p50_us']:.1f} µs"),
            ("difficulty gate p50", f"{lora['difficulty_gate_p50_ms']:.1f} ms"),
        ]
    return rows


def summary(directory: Path) -> str:
    overhead, distill, router = (load(directory, n) for n in ("overhead", "distill", "router"))
    rows: list[tuple[str, str]] = []
    if overhead is not None:
        rows += overhead_rows(overhead)
    if distill is not None:
        rows += distill_rows(distill)
    if router is not None:
        rows += router_rows(router)
    if not rows:
        raise SystemExit(f"no benchmark figures in {directory}")
    machine = (overhead or {}).get("machine") or {}
    date = (machine.get("date") or (distill or {}).get("common", {}).get("date") or "?")[:10]
    where = (
        f"{machine['nproc']} cores, {machine['cpu']}, Python {machine['python']}"
        if machine
        else (distill or {}).get("common", {}).get("machine", "?")
    )
    lines = [
        f"Measured on {date}, {where}; figures with a / are classifier / LoRA student.",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path, help="where the benchmarks wrote --json files")
    args = parser.parse_args(argv)
    sys.stdout.write(summary(args.directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
