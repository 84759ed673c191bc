"""The demo's live view: phase (with the training run's progress, also of a slower
student training while the first one serves), request rate, share on the student,
agreement, dollars, and p50 latency of each path.

:func:`render` is the panel a terminal shows; :class:`ProgressLines` is the same as lines
of plain text for output that is not a terminal (``make demo | tee``, a CI log), where a
redrawn panel would show nothing until the end: a line at each change of phase, and a
progress line every few seconds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from proxy.demo.traffic import TrafficStats


@dataclass
class State:
    """What the admin API last said about the task and its latest training run."""

    task: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    pairs_needed: int = 0
    elapsed: float = 0.0

    @property
    def phase(self) -> str:
        """The task's mode once a version serves, even while a slower student trains on
        (the tournament publishes the first kind that passes at once); before that, the
        training run's phase, or capture."""
        task, run = self.task, self.run
        serving = task is not None and task.get("active_version") is not None
        if task is not None and serving:
            if task["mode"] == "live":
                return f"live {task['cutover_percent']:g}%"
            return str(task["mode"])
        if run is not None and run["state"] in ("queued", "running"):
            return f"training: {run['phase'] or run['state']}"
        return "capturing teacher answers"


def render(state: State, stats: TrafficStats) -> RenderableType:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    task = state.task or {}
    table.add_row("phase", Text(state.phase, style="cyan"))
    table.add_row(
        "requests",
        f"{stats.answered:,} answered, {stats.rate():.1f}/s"
        + (f", {stats.errors} errors" if stats.errors else ""),
    )
    exchanges = (task.get("exchanges") or {}).get("ok", 0)
    if task.get("active_version") is None and state.pairs_needed:
        table.add_row("captured pairs", f"{exchanges:,} (first training at {state.pairs_needed})")
    share = stats.student_share()
    table.add_row("on the student", "-" if share is None else f"{share:.0%} of the last 30 s")
    table.add_row("agreement", _agreement(task))
    cost = float(task.get("cost_usd") or 0.0)
    savings = float(task.get("savings_usd") or 0.0)
    table.add_row("spent", f"${cost:.4f}; saved ${savings:.4f} on what the student served")
    table.add_row("p50 latency", _latency(stats))
    parts: list[RenderableType] = [table]
    run = state.run
    if run is not None and run["state"] in ("queued", "running") and run.get("total_steps"):
        bar = ProgressBar(total=run["total_steps"], completed=run["step"], width=40)
        loss = f"  loss {run['loss']:.3f}" if run.get("loss") is not None else ""
        eta = f"  eta {run['eta_seconds']:.0f}s" if run.get("eta_seconds") else ""
        parts.append(Group(Text(f"step {run['step']}/{run['total_steps']}{loss}{eta}"), bar))
    title = f"stillroom demo · {state.elapsed:.0f} s"
    return Panel(Group(*parts), title=title, expand=False)


def _agreement(task: dict[str, Any]) -> str:
    version = task.get("active_version")
    if not version:
        return "-"
    text = (
        f"v{version['number']} {version.get('kind', 'lora')}: held-out "
        f"{_percent(version.get('retained_agreement'))} on "
        f"{_percent(version.get('retained_share'))} of inputs"
    )
    live = task.get("live_agreement") or {}
    for kind in ("shadow", "audit"):
        figures = live.get(kind) or {}
        if figures.get("pairs"):
            text += f"; {kind} {_percent(figures['agreement'])} of {figures['pairs']}"
    return text


def _latency(stats: TrafficStats) -> str:
    parts = []
    for name in ("student", "teacher", "fallback"):
        p50 = stats.p50(name)
        if p50 is not None:
            parts.append(f"{name} {1000 * p50:.0f} ms")
    return ", ".join(parts) or "-"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal


class ProgressLines:
    """The live view as plain lines: one when the phase changes, and a progress line every
    ``every`` seconds of the demo (by ``State.elapsed``)."""

    def __init__(self, every: float = PROGRESS_EVERY) -> None:
        self.every = every
        self._phase: str | None = None
        self._next_progress = 0.0
        self._progress_at: float | None = None

    def lines(self, state: State, stats: TrafficStats, *, final: bool = False) -> list[str]:
        """What to print for this look at the demo (``final``: the last look, which ends
        with a progress line)."""
        stamp = f"[{state.elapsed:5.0f} s]"
        out = []
        if state.phase != self._phase:
            self._phase = state.phase
            out.append(f"{stamp} phase: {state.phase}")
        due = state.elapsed >= self._next_progress
        if due or (final and self._progress_at != state.elapsed):
            self._next_progress = state.elapsed + self.every
            self._progress_at = state.elapsed
            out.append(f"{stamp} {progress_line(state, stats)}")
        return out


def progress_line(state: State, stats: TrafficStats) -> str:
    """One line of the live view's figures."""
    parts = []
    run = state.run
    if run is not None and run["state"] in ("queued", "running") and run.get("total_steps"):
        training = f"step {run['step']}/{run['total_steps']}"
        if run.get("loss") is not None:
            training += f", loss {run['loss']:.3f}"
        if run.get("eta_seconds"):
            training += f", eta {run['eta_seconds']:.0f} s"
        parts.append(training)
    parts.append(f"{stats.answered:,} answered, {stats.rate():.1f}/s")
    if stats.errors:
        parts.append(f"{stats.errors} errors")
    task = state.task or {}
    exchanges = (task.get("exchanges") or {}).get("ok", 0)
    if task.get("active_version") is None and state.pairs_needed:
        parts.append(f"{exchanges:,}/{state.pairs_needed} pairs captured")
    share = stats.student_share()
    parts.append("student -" if share is None else f"student {share:.0%}")
    if task.get("active_version"):
        parts.append(_agreement(task))
    parts.append(f"spent ${float(task.get('cost_usd') or 0.0):.4f}")
    latency = _latency(stats)
    if latency != "-":
        parts.append(f"p50 {latency}")
    return " | ".join(parts)
