"""The demo's report, computed from the store alone: who served the task's traffic, what it
cost against the all-teacher baseline, the agreement kept, the latency of each path; as a
terminal table, a Markdown file and a PNG chart."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.evaluation import read_evaluation
from core.intervals import interval
from core.settings import Settings
from core.tables import Exchange, ShadowResult, StudentVersion, Task
from core.tenants import DEFAULT_TENANT, split_task_key
from proxy.demo.chart_labels import place_phase_labels

SERVED = ("teacher", "student", "fallback")


@dataclass(frozen=True, slots=True)
class Row:
    """One exchange as the report sees it."""

    at: float  # seconds since the first exchange
    served_by: str
    cost: float  # what it cost
    teacher_cost: float  # what the teacher alone would have cost
    latency_ms: float
    audit: bool  # origin "audit": a teacher call made to audit the student, not a request


@dataclass
class Figures:
    task: str
    started_at: datetime | None  # the first exchange: time 0 of the timeline
    mode: str
    cutover_percent: float
    requests: int
    served: dict[str, int]
    student_share: float
    cost_usd: float
    teacher_only_usd: float
    audits: int
    versions: list[dict[str, Any]]
    active_version: dict[str, Any] | None
    live_agreement: dict[str, dict[str, Any]]
    latency_ms: dict[str, dict[str, float]]
    final_stage: dict[str, Any] | None
    timeline: list[dict[str, float]] = field(default_factory=list)
    tenant: str = DEFAULT_TENANT  # whose task it is; ``task`` is its name, as clients send it

    @property
    def savings_usd(self) -> float:
        return self.teacher_only_usd - self.cost_usd

    @property
    def savings_percent(self) -> float:
        return 100 * self.savings_usd / self.teacher_only_usd if self.teacher_only_usd else 0.0


def collect(
    engine: Engine, settings: Settings, task_name: str, *, final_since: datetime | None = None
) -> Figures:
    """Every figure of the report, read from the store. ``final_since``: when the task
    entered its last stage (the steady state the per-million figures describe)."""
    with Session(engine) as session:
        task = session.get(Task, task_name)
        if task is None:
            raise LookupError(f"task {task_name!r} has no traffic in the store")
        exchanges = session.exec(
            select(Exchange)
            .where(Exchange.task == task_name, Exchange.status == "ok")
            .order_by(col(Exchange.created_at))
        ).all()
        versions = session.exec(
            select(StudentVersion)
            .where(StudentVersion.task == task_name)
            .order_by(col(StudentVersion.number))
        ).all()
        active = (
            session.get(StudentVersion, task.active_version_id) if task.active_version_id else None
        )
        live = _live_agreement(session, active) if active else {}
        start = _utc(exchanges[0].created_at) if exchanges else None
        rows = [_row(e, start, settings) for e in exchanges]
        final = None
        if final_since is not None and start is not None:
            offset = (final_since - start).total_seconds()
            final = _stage([r for r in rows if r.at >= offset], since=offset)
        requests = [r for r in rows if not r.audit]
        served = {name: sum(r.served_by == name for r in requests) for name in SERVED}
        name, tenant = split_task_key(task_name)
        return Figures(
            task=name,
            tenant=tenant,
            started_at=start,
            mode=task.mode,
            cutover_percent=task.cutover_percent,
            requests=len(requests),
            served=served,
            student_share=served["student"] / len(requests) if requests else 0.0,
            cost_usd=sum(r.cost for r in rows),
            teacher_only_usd=sum(r.teacher_cost for r in requests),
            audits=len(rows) - len(requests),
            versions=[_version(v) for v in versions],
            active_version=_version(active) if active else None,
            live_agreement=live,
            latency_ms=_latency(requests),
            final_stage=final,
            timeline=_timeline(rows),
        )


def _row(exchange: Exchange, start: datetime | None, settings: Settings) -> Row:
    cost = float(exchange.cost_usd or 0.0)
    teacher_cost = cost
    if exchange.served_by == "student":
        price = settings.price_of(exchange.model)
        teacher_cost = (
            price.cost(exchange.prompt_tokens or 0, exchange.completion_tokens or 0)
            if price is not None
            else 0.0
        )
    at = (_utc(exchange.created_at) - start).total_seconds() if start is not None else 0.0
    audit = exchange.origin == "audit"
    return Row(at, exchange.served_by, cost, teacher_cost, exchange.latency_ms, audit)


def _utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes; the store writes UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def seconds_since_start(figures: Figures, moment: datetime) -> float:
    return (moment - figures.started_at).total_seconds() if figures.started_at else 0.0


def _version(version: StudentVersion) -> dict[str, Any]:
    evaluation = read_evaluation(version)
    return {
        "number": version.number,
        "kind": version.kind,
        "state": version.state,
        "reason": version.reason,
        "agreement": version.agreement,
        "base_agreement": version.base_agreement,
        "retained_share": version.retained_share,
        "retained_agreement": version.retained_agreement,
        "examples": evaluation.examples,
        "training_seconds": evaluation.training_seconds,
    }


def _live_agreement(session: Session, version: StudentVersion) -> dict[str, dict[str, Any]]:
    """Shadow and audit agreement of the live version, each an estimate with its two-sided
    95% Clopper-Pearson interval (``core.intervals``)."""
    figures = {}
    for kind in ("shadow", "audit"):
        agreed = session.exec(
            select(ShadowResult.agrees).where(
                ShadowResult.version_id == version.id, ShadowResult.kind == kind
            )
        ).all()
        figures[kind] = interval(sum(agreed), len(agreed)).public()
    return figures


def _with_interval(figure: dict[str, Any]) -> str:
    if figure.get("agreement") is None:
        return f"- of {figure.get('pairs', 0)} pairs"
    return (
        f"{_pct(figure['agreement'])} of {figure['pairs']} pairs "
        f"(95% interval {_pct(figure['low'])} to {_pct(figure['high'])})"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency(rows: list[Row]) -> dict[str, dict[str, float]]:
    figures = {}
    for name in SERVED:
        times = [r.latency_ms for r in rows if r.served_by == name]
        if times:
            figures[name] = {
                "count": float(len(times)),
                "p50": statistics.median(times),
                "p99": _percentile(times, 0.99),
            }
    return figures


def _stage(rows: list[Row], *, since: float) -> dict[str, Any] | None:
    requests = [r for r in rows if not r.audit]
    if not requests:
        return None
    cost = sum(r.cost for r in rows)
    teacher_only = sum(r.teacher_cost for r in requests)
    return {
        "since_seconds": since,
        "requests": len(requests),
        "student_share": sum(r.served_by == "student" for r in requests) / len(requests),
        "cost_per_million_usd": 1e6 * cost / len(requests),
        "teacher_only_per_million_usd": 1e6 * teacher_only / len(requests),
        "savings_percent": 100 * (teacher_only - cost) / teacher_only if teacher_only else 0.0,
    }


def _timeline(rows: list[Row], bins: int = 60) -> list[dict[str, float]]:
    """Per time bin (``t``: its start): share on each path, and cumulative cost against the
    baseline at the bin's end."""
    if not rows:
        return []
    width = max(rows[-1].at / bins, 1.0)
    points: list[dict[str, float]] = []
    cost = teacher_only = 0.0
    index = 0
    for number in range(int(rows[-1].at // width) + 1):
        start, end = number * width, (number + 1) * width
        counts = dict.fromkeys(SERVED, 0)
        while index < len(rows) and rows[index].at < end:
            row = rows[index]
            cost += row.cost
            if not row.audit:
                teacher_only += row.teacher_cost
                counts[row.served_by] = counts.get(row.served_by, 0) + 1
            index += 1
        total = sum(counts.values())
        points.append(
            {
                "t": start,
                **{f"{name}_share": counts[name] / total if total else 0.0 for name in SERVED},
                "requests": float(total),
                "cost_usd": cost,
                "teacher_only_usd": teacher_only,
            }
        )
    return points


def markdown(
    figures: Figures, *, settings: Settings, phases: list[tuple[float, str]], chart: str | None
) -> str:
    """The report as a Markdown document."""
    price = settings.price_of("gpt-4o")
    lines = [
        f"# stillroom demo report: task `{figures.task}`"
        + (f" (tenant `{figures.tenant}`)" if figures.tenant != DEFAULT_TENANT else ""),
        "",
        f"Final state: **{figures.mode}**"
        + (f" at {figures.cutover_percent:g}%" if figures.mode == "live" else "")
        + f". {figures.requests:,} requests from the app, {figures.audits:,} audit calls "
        "to the teacher.",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for name, value in summary_rows(figures):
        lines.append(f"| {name} | {value} |")
    if price is not None:
        lines += [
            "",
            f"Prices: teacher `gpt-4o` ${price.input:g} / ${price.output:g} per million "
            f"input/output tokens; student ${settings.student_price.input:g} / "
            f"${settings.student_price.output:g}.",
        ]
    lines += [
        "",
        "## Student versions (held-out evaluation)",
        "",
        "| version | kind | state | held-out agreement | share at target | agreement on it "
        "| note |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in figures.versions:
        lines.append(
            f"| v{v['number']} | {v['kind']} | {v['state']} | {_pct(v['agreement'])} | "
            f"{_pct(v['retained_share'])} | {_pct(v['retained_agreement'])} | "
            f"{v['reason'] or ''} |"
        )
    lines += [
        "",
        "## Latency by path (as the proxy measured it)",
        "",
        "| path | requests | p50 | p99 |",
        "|---|---|---|---|",
    ]
    for name, stats in figures.latency_ms.items():
        lines.append(
            f"| {name} | {int(stats['count']):,} | {stats['p50']:.1f} ms | {stats['p99']:.1f} ms |"
        )
    if phases:
        lines += ["", "## Phases", "", "| at | phase |", "|---|---|"]
        lines += [f"| {at:.0f} s | {phase} |" for at, phase in phases]
    if chart:
        lines += ["", f"![traffic share and cost over time]({chart})"]
    return "\n".join(lines) + "\n"


def summary_rows(figures: Figures) -> list[tuple[str, str]]:
    """The headline figures, for the terminal table and the Markdown file."""
    active = figures.active_version or {}
    rows = [
        ("served by the student (whole run)", _pct(figures.student_share)),
        (
            "held-out agreement, published version",
            f"{_pct(active.get('agreement'))} "
            f"(v{active.get('number', '-')}, {active.get('kind', '-')})",
        ),
        ("held-out agreement on what it answers", _pct(active.get("retained_agreement"))),
    ]
    for kind in ("shadow", "audit"):
        live = figures.live_agreement.get(kind) or {}
        rows.append((f"live {kind} agreement", _with_interval(live)))
    audit = figures.live_agreement.get("audit") or {}
    held_at = (
        f", at audited agreement {_pct(audit['low'])} to {_pct(audit['high'])}"
        if audit.get("agreement") is not None
        else ""
    )
    rows += [
        ("spent", f"${figures.cost_usd:.4f} vs ${figures.teacher_only_usd:.4f} all-teacher"),
        ("saved (whole run)", f"{figures.savings_percent:.1f}%{held_at}"),
    ]
    final = figures.final_stage
    if final is not None:
        rows += [
            ("served by the student (final stage)", _pct(final["student_share"])),
            ("saved (final stage)", f"{final['savings_percent']:.1f}%"),
            (
                "cost per million requests (final stage)",
                f"${final['cost_per_million_usd']:,.2f} vs "
                f"${final['teacher_only_per_million_usd']:,.2f} all-teacher",
            ),
        ]
    for name in ("student", "teacher"):
        stats = figures.latency_ms.get(name)
        if stats:
            rows.append((f"latency p50, {name}", f"{stats['p50']:.1f} ms"))
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def draw_chart(figures: Figures, phases: list[tuple[float, str]], path: Path) -> Path:
    """Traffic share by path over time, and cumulative cost against the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = figures.timeline
    t = [p["t"] for p in points]
    figure, (share, cost) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, dpi=110)
    share.stackplot(
        t,
        [p["student_share"] * 100 for p in points],
        [p["fallback_share"] * 100 for p in points],
        [p["teacher_share"] * 100 for p in points],
        labels=["student", "fallback (teacher after the student)", "teacher"],
        colors=["#2a9d8f", "#e9c46a", "#8d99ae"],
        step="post",
    )
    share.set_ylabel("share of requests (%)")
    share.set_ylim(0, 100)
    share.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    share.set_title(f"stillroom demo: task {figures.task}")
    cost.plot(
        t,
        [p["teacher_only_usd"] for p in points],
        label="all-teacher baseline",
        color="#8d99ae",
        linewidth=2,
    )
    cost.plot(
        t, [p["cost_usd"] for p in points], label="with stillroom", color="#2a9d8f", linewidth=2
    )
    cost.set_ylabel("cumulative cost (USD)")
    cost.set_xlabel("seconds since the first request")
    cost.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for axis in (share, cost):
        for at, _ in phases:
            axis.axvline(at, color="#444444", linewidth=0.6, linestyle=":")
    figure.tight_layout()
    place_phase_labels(share, phases, top=100)  # measured on the final layout
    figure.savefig(path, dpi=figure.dpi)
    plt.close(figure)
    return path
