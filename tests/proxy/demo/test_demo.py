"""``stillroom demo --fast``: the whole loop runs to a report whose figures are the store's."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from core.settings import Settings
from core.store import create_store_engine
from core.tables import Exchange, ShadowResult
from core.tenants import task_key
from proxy.demo.report import Figures, summary_rows

from servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("demo")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STILLROOM_")}
    command = [
        sys.executable,
        "-c",
        "from proxy.cli.main import main; main()",
        "demo",
        "--fast",
        "--no-keep-serving",
        "--dir",
        str(directory),
        "--port",
        str(free_port()),
    ]
    result = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (directory / "stdout.txt").write_text(result.stdout)  # a pipe, as `make demo | tee`
    return directory


def report(demo: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((demo / "report.json").read_text())
    return document


def stored(demo: Path) -> tuple[list[Exchange], set[str | None]]:
    """The task's complete exchanges, and the ids of those scored as audits."""
    figures = report(demo)
    key = task_key(figures["task"], figures["tenant"])  # the demo app's key's tenant's task
    engine = create_store_engine(f"sqlite:///{demo / 'stillroom.db'}")
    try:
        with Session(engine) as session:
            exchanges = list(
                session.exec(
                    select(Exchange).where(Exchange.task == key, Exchange.status == "ok")
                ).all()
            )
            audited = set(
                session.exec(
                    select(ShadowResult.exchange_id).where(ShadowResult.kind == "audit")
                ).all()
            )
        return exchanges, audited
    finally:
        engine.dispose()


def test_the_report_counts_what_the_store_holds(demo: Path) -> None:
    figures = report(demo)
    exchanges, _ = stored(demo)
    requests = [e for e in exchanges if e.origin == "client"]
    assert figures["requests"] == len(requests)
    assert figures["audits"] == len(exchanges) - len(requests)
    for served_by in ("teacher", "student", "fallback"):
        assert figures["served"][served_by] == sum(e.served_by == served_by for e in requests)
    assert figures["cost_usd"] == pytest.approx(sum(e.cost_usd or 0.0 for e in exchanges))
    settings = Settings()
    teacher_only = 0.0
    for e in requests:
        if e.served_by == "student":
            price = settings.price_of(e.model)
            assert price is not None
            teacher_only += price.cost(e.prompt_tokens or 0, e.completion_tokens or 0)
        else:
            teacher_only += e.cost_usd or 0.0
    assert figures["teacher_only_usd"] == pytest.approx(teacher_only)


def test_audit_calls_are_stored_as_audits_not_requests(demo: Path) -> None:
    exchanges, audited = stored(demo)
    audits = {e.id for e in exchanges if e.origin == "audit"}
    assert audited <= audits, "every scored audit's teacher call is an audit exchange"
    assert {e.origin for e in exchanges} <= {"client", "audit"}
    assert all(e.served_by == "teacher" for e in exchanges if e.origin == "audit")


def test_the_student_takes_the_traffic_over_and_the_cost_curve_bends(demo: Path) -> None:
    figures = report(demo)
    phases = [phase for _, phase in figures["phases"]]
    assert phases[0] == "capturing teacher answers"
    assert phases.index("shadow") < phases.index("live 10%") < phases.index("live 100%")
    assert (figures["mode"], figures["cutover_percent"]) == ("live", 100.0)
    final = figures["final_stage"]
    assert final["student_share"] > 0.5, "the student serves most of the final stage"
    assert final["cost_per_million_usd"] < final["teacher_only_per_million_usd"] / 2
    assert figures["cost_usd"] < figures["teacher_only_usd"]
    # The last bin may hold a handful of requests; compare the last quarter as a whole.
    timeline = [point for point in figures["timeline"] if point["requests"] > 0]
    quarter = max(1, len(timeline) // 4)
    early = sum(p["student_share"] for p in timeline[:quarter]) / quarter
    late = sum(p["student_share"] for p in timeline[-quarter:]) / quarter
    assert late > early


def test_the_published_student_kept_the_quality(demo: Path) -> None:
    figures = report(demo)
    active = figures["active_version"]
    assert active["state"] == "published"
    assert active["retained_agreement"] >= 0.95
    audit = figures["live_agreement"]["audit"]
    assert audit["pairs"] > 0


def test_the_report_files_show_the_figures(demo: Path) -> None:
    figures = report(demo)
    assert (demo / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (demo / "report.md").read_text()
    rows = summary_rows(Figures(**{k: v for k, v in figures.items() if k != "phases"}))
    for name, value in rows:
        assert f"| {name} | {value} |" in text
    assert "![traffic share and cost over time](report.png)" in text


def test_piped_output_shows_each_phase_and_steady_progress(demo: Path) -> None:
    lines = (demo / "stdout.txt").read_text().splitlines()
    stamped = [line for line in lines if line.startswith("[")]
    shown = [line.split(" phase: ")[1] for line in stamped if " phase: " in line]
    phases = [phase for _, phase in report(demo)["phases"]]
    assert [p.split(":")[0] for p in shown if not p.startswith("training")] == [
        p for p in phases if p != "training"
    ]
    assert any(p.startswith("training") for p in shown)
    seconds = [float(line[1:].split(" s]")[0]) for line in stamped if " phase: " not in line]
    gaps = [b - a for a, b in itertools.pairwise(seconds)]
    assert max(gaps) < 15, "a progress line every few seconds, never minutes of silence"
    assert "\x1b" not in "\n".join(lines)
