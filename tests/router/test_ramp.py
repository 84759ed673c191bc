"""Auto-ramp: shadow, then live 10, 25, 50, 100% while scored pairs agree at the target."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import ShadowResult, StudentVersion, Task, TaskTransition
from router.ramp import next_stage, ramp

VERSION = "v" * 32
THRESHOLD = -0.5  # the version's calibrated confidence threshold


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    with Session(engine) as session:
        session.add(
            StudentVersion(
                id=VERSION,
                task="t",
                number=1,
                state="published",
                base_model="base",
                adapter_name="t-v1",
                adapter_path="/adapters/t/v1",
                confidence_threshold=THRESHOLD,
            )
        )
        session.add(
            Task(
                name="t",
                mode="shadow",
                auto_ramp=True,
                active_version_id=VERSION,
                stage_started_at=datetime.now(UTC) - timedelta(minutes=1),
            )
        )
        session.commit()
    yield engine
    engine.dispose()


def score(
    engine: Engine,
    count: int,
    *,
    agree: bool = True,
    confidence: float = -0.1,
    kind: str = "shadow",
) -> None:
    with Session(engine) as session:
        for _ in range(count):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task="t",
                    version_id=VERSION,
                    kind=kind,
                    agrees=agree,
                    confidence=confidence,
                    score=1.0 if agree else 0.0,
                    student_answer="a",
                    teacher_answer="a",
                )
            )
        session.commit()


def stage(engine: Engine) -> tuple[str, float]:
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        return task.mode, task.cutover_percent


def transitions(engine: Engine) -> list[TaskTransition]:
    with Session(engine) as session:
        return list(
            session.exec(select(TaskTransition).order_by(col(TaskTransition.created_at))).all()
        )


def set_task(engine: Engine, **values: object) -> None:
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        for name, value in values.items():
            setattr(task, name, value)
        session.add(task)
        session.commit()


def test_the_ladder_goes_shadow_10_25_50_100() -> None:
    assert next_stage("shadow", 0) == ("live", 10)
    assert next_stage("live", 10) == ("live", 25)
    assert next_stage("live", 50) == ("live", 100)
    assert next_stage("live", 100) is None
    assert next_stage("live", 30) is None, "a hand-set cutover is left alone"


def test_each_stage_needs_enough_agreeing_pairs_of_its_own(engine: Engine) -> None:
    settings = Settings(ramp_min_pairs=20, target_agreement=0.9)
    score(engine, 10)
    assert ramp(engine, settings) == []
    score(engine, 10)
    assert ramp(engine, settings) == [("t", "live", 10.0)]
    assert ramp(engine, settings) == [], "the new stage starts counting afresh"
    score(engine, 20)
    assert ramp(engine, settings) == [("t", "live", 25.0)]
    assert stage(engine) == ("live", 25.0)


def test_disagreement_holds_the_task_where_it_is(engine: Engine) -> None:
    settings = Settings(ramp_min_pairs=20, target_agreement=0.9)
    score(engine, 15)
    score(engine, 10, agree=False)
    assert ramp(engine, settings) == []
    assert stage(engine) == ("shadow", 0.0)


def test_shadow_answers_below_the_threshold_do_not_count(engine: Engine) -> None:
    """They would have gone to the teacher: neither evidence for nor against the student."""
    settings = Settings(ramp_min_pairs=20, target_agreement=0.9)
    score(engine, 30, agree=False, confidence=THRESHOLD - 1)
    score(engine, 19)
    assert ramp(engine, settings) == [], "19 pairs the student would serve are too few"
    score(engine, 1, kind="audit", confidence=THRESHOLD - 1)
    assert ramp(engine, settings) == [("t", "live", 10.0)], "an audited answer was served"


def test_each_step_up_is_kept_as_an_auto_ramp_transition(engine: Engine) -> None:
    settings = Settings(ramp_min_pairs=20, target_agreement=0.9)
    score(engine, 20)
    ramp(engine, settings)
    score(engine, 20)
    ramp(engine, settings)
    steps = transitions(engine)
    assert [(t.cause, t.from_mode, t.to_mode, t.to_cutover_percent) for t in steps] == [
        ("auto_ramp", "shadow", "live", 10.0),
        ("auto_ramp", "live", "live", 25.0),
    ]
    assert steps[0].reason is not None
    assert "agreed 100.0% over 20 scored pairs" in steps[0].reason


def test_a_stage_not_earned_writes_no_transition(engine: Engine) -> None:
    score(engine, 5)
    assert ramp(engine, Settings(ramp_min_pairs=20)) == []
    assert transitions(engine) == []


def test_a_tasks_own_target_holds_it_where_the_setting_would_move_it(engine: Engine) -> None:
    settings = Settings(ramp_min_pairs=20, target_agreement=0.9)
    set_task(engine, target_agreement=0.99)
    score(engine, 19)
    score(engine, 1, agree=False)  # 95%
    assert ramp(engine, settings) == []
    set_task(engine, target_agreement=None)
    assert ramp(engine, settings) == [("t", "live", 10.0)]


def test_a_tasks_own_target_moves_it_where_the_setting_would_hold_it(engine: Engine) -> None:
    settings = Settings(ramp_min_pairs=20, target_agreement=0.99)
    score(engine, 19)
    score(engine, 1, agree=False)  # 95%
    assert ramp(engine, settings) == []
    set_task(engine, target_agreement=0.9)
    assert ramp(engine, settings) == [("t", "live", 10.0)]
