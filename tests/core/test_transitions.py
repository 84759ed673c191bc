"""A task's mode and cutover change in one place, and each change is kept with its cause."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.store import create_store_engine, create_tables
from core.tables import Task, TaskTransition
from core.transitions import change_mode, lock_task, recent_transitions

EARLIER = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    with Session(engine) as session:
        session.add(Task(name="t", mode="shadow", cutover_percent=0.0, stage_started_at=EARLIER))
        session.commit()
    yield engine
    engine.dispose()


def transitions(engine: Engine) -> list[TaskTransition]:
    with Session(engine) as session:
        return list(session.exec(select(TaskTransition)).all())


def test_a_change_updates_the_task_and_records_from_to_cause_and_reason(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        task = lock_task(session=session, name="t")
        assert task is not None
        made = change_mode(
            session=session,
            task=task,
            cause="admin",
            reason="first live step",
            mode="live",
            cutover_percent=10,
        )
        assert made is not None
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        assert (task.mode, task.cutover_percent) == ("live", 10.0)
        assert task.stage_started_at is not None
        assert task.stage_started_at.replace(tzinfo=UTC) > EARLIER
    [kept] = transitions(engine)
    assert (kept.task, kept.cause, kept.reason) == ("t", "admin", "first live step")
    assert (kept.from_mode, kept.from_cutover_percent) == ("shadow", 0.0)
    assert (kept.to_mode, kept.to_cutover_percent) == ("live", 10.0)


def test_a_cutover_alone_changes_the_cutover_and_keeps_the_mode(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        task = session.get(Task, "t")
        assert task is not None
        change_mode(session=session, task=task, cause="auto_ramp", reason="-", mode="live")
        change_mode(session=session, task=task, cause="auto_ramp", reason="-", cutover_percent=25)
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        assert (task.mode, task.cutover_percent) == ("live", 25.0)
    assert sorted((t.to_mode, t.to_cutover_percent) for t in transitions(engine)) == [
        ("live", 0.0),
        ("live", 25.0),
    ]


def test_a_change_to_what_the_task_already_has_writes_nothing(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        task = session.get(Task, "t")
        assert task is not None
        same = change_mode(
            session=session,
            task=task,
            cause="drift",
            reason="-",
            mode="shadow",
            cutover_percent=0,
        )
        assert same is None
        assert change_mode(session=session, task=task, cause="admin", reason="-") is None
    assert transitions(engine) == []
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        assert task.stage_started_at is not None
        assert task.stage_started_at.replace(tzinfo=UTC) == EARLIER, "the stage goes on"


def test_recent_transitions_are_newest_first_and_limited(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        task = session.get(Task, "t")
        assert task is not None
        for step, percent in enumerate((10, 25, 50)):
            change_mode(
                session=session,
                task=task,
                cause="auto_ramp",
                reason=f"step {step}",
                mode="live",
                cutover_percent=percent,
                at=EARLIER + timedelta(minutes=step + 1),
            )
    with Session(engine) as session:
        latest = recent_transitions(session=session, task="t", limit=2)
        assert [t.to_cutover_percent for t in latest] == [50.0, 25.0]
        assert recent_transitions(session=session, task="other") == []
