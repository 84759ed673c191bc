"""The demo's live view when its output is not a terminal (``make demo | tee``, a CI log):
plain lines as things happen, a line per phase change and a progress line every few
seconds, instead of a panel that shows nothing until the end."""

from __future__ import annotations

import io
import time
from typing import Any

from rich.console import Console

from proxy.demo.run import live_view
from proxy.demo.traffic import Sample, TrafficStats
from proxy.demo.view import PROGRESS_EVERY, ProgressLines, State


def run_state(step: int) -> dict[str, Any]:
    return {
        "state": "running",
        "phase": "training lora",
        "step": step,
        "total_steps": 40,
        "loss": 0.5,
        "eta_seconds": 30,
    }


def live_task(percent: int) -> dict[str, Any]:
    version = {"number": 1, "kind": "classifier", "retained_agreement": 0.97, "retained_share": 0.9}
    return {
        "mode": "live",
        "cutover_percent": percent,
        "active_version": version,
        "exchanges": {"ok": 900},
        "cost_usd": 1.25,
    }


def script(second: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The task and run the admin API reports at ``second`` of a short demo."""
    if second < 10:
        return {"mode": "off", "active_version": None, "exchanges": {"ok": int(30 * second)}}, None
    if second < 20:
        return {"mode": "off", "active_version": None}, run_state(int(second - 10))
    return live_task(10 if second < 25 else 100), None


def watched(out: io.StringIO, until: float = 30.0) -> list[str]:
    """Look at the scripted demo every half second, as the demo does, writing to ``out``."""
    console = Console(file=out, width=100)
    state = State(pairs_needed=300)
    stats = TrafficStats()
    with live_view(console, state, stats) as show:
        for tick in range(int(2 * until) + 1):
            state.elapsed = tick / 2
            state.task, state.run = script(state.elapsed)
            stats.record(
                Sample(at=time.monotonic(), served_by="teacher", seconds=0.6, stream=False)
            )
            show()
        show(final=True)
    return out.getvalue().splitlines()


def test_a_line_for_each_phase_as_it_begins() -> None:
    phases = [line for line in watched(io.StringIO()) if " phase: " in line]
    assert [line.split(" phase: ")[1] for line in phases] == [
        "capturing teacher answers",
        "training: training lora",
        "live 10%",
        "live 100%",
    ]
    assert [line.split("]")[0].strip("[ s") for line in phases] == ["0", "10", "20", "25"]


def test_progress_every_few_seconds_with_the_figures() -> None:
    lines = watched(io.StringIO())
    progress = [line for line in lines if " phase: " not in line]
    seconds = [float(line.split("]")[0].strip("[ s")) for line in progress]
    assert seconds[:-1] == [PROGRESS_EVERY * i for i in range(len(seconds) - 1)]
    assert seconds[-1] == 30  # the final look, whenever it comes
    assert any("step 5/40, loss 0.500, eta 30 s" in line for line in progress)
    assert any("/300 pairs captured" in line for line in progress)
    assert "v1 classifier: held-out 97.0%" in progress[-1]
    assert "spent $1.2500" in progress[-1]


def test_plain_lines_carry_no_terminal_codes() -> None:
    text = "\n".join(watched(io.StringIO()))
    assert "\x1b" not in text
    assert "╭" not in text  # no panel


def test_each_line_is_written_when_it_happens() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100)
    state = State(pairs_needed=300)
    with live_view(console, state, TrafficStats()) as show:
        assert "phase: capturing teacher answers" in out.getvalue()  # before any wait
        state.elapsed, (state.task, state.run) = 12.0, script(12.0)
        show()
        assert "phase: training" in out.getvalue()


def test_a_slower_student_training_while_the_first_serves_shows_the_mode_and_its_progress() -> None:
    state = State(task=live_task(10), run=run_state(7))
    lines = ProgressLines().lines(state, TrafficStats())
    assert lines[0].endswith("phase: live 10%")
    assert "step 7/40" in lines[1]
    assert "v1 classifier" in lines[1]
