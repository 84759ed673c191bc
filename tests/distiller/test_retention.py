"""Retention: the distiller deletes exchanges older than their task's retention, in bounded
batches, keeping the held-out exchanges its live version was evaluated on; and what is
deleted (by retention or on request) is gone from the next curation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.deletion import ExchangeFilter, delete_exchanges
from core.embedding import Encoder
from core.metrics import Metrics
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges
from core.tables import Exchange, ExchangeCreate, ShadowResult, StudentVersion, Task, TrainingRun
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.curation import CurationConfig, curate
from distiller.pipeline import Pipeline
from distiller.scheduler import Distiller

TASK = "triage"
NOW = datetime.now(UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def store(
    engine: Engine,
    count: int,
    *,
    days_old: float,
    task: str = TASK,
    user: str | None = None,
    text: str = "question",
) -> list[str]:
    """``count`` teacher-answered exchanges of ``task``, ``days_old`` days old; their ids."""
    exchanges = [
        ExchangeCreate(
            id=uuid.uuid4().hex,
            task=task,
            created_at=NOW - timedelta(days=days_old, seconds=number),
            served_by="teacher",
            status="ok",
            http_status=200,
            request={"model": "m", "messages": [{"role": "user", "content": f"{text} {number}"}]},
            response={
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "billing"},
                        "finish_reason": "stop",
                    }
                ]
            },
            end_user=user,
            latency_ms=5.0,
        )
        for number in range(count)
    ]
    insert_exchanges(engine=engine, exchanges=exchanges)
    return [exchange.id for exchange in exchanges]


def stored_ids(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(select(Exchange.id)).all())


def distiller(engine: Engine, tmp_path: Path, **settings: object) -> Distiller:
    unused = StudentReplicas([HttpStudentBackend("http://127.0.0.1:9", httpx.AsyncClient())])
    pipeline = Pipeline(
        settings=Settings(data_dir=tmp_path / "data", **settings),  # type: ignore[arg-type]
        engine=engine,
        backend=unused,
        encoder=Encoder(),
        metrics=Metrics(CollectorRegistry()),
    )
    return Distiller(pipeline)


def deleted_metric(job: Distiller, reason: str) -> float:
    value = job.pipeline.metrics.registry.get_sample_value(
        "stillroom_exchanges_deleted_total", {"reason": reason}
    )
    assert value is not None
    return value


async def test_retention_deletes_expired_exchanges_in_bounded_transactions(
    engine: Engine, tmp_path: Path
) -> None:
    old = store(engine, 7, days_old=40)
    recent = store(engine, 2, days_old=1)
    commits: list[int] = []
    sa.event.listen(engine, "commit", lambda _connection: commits.append(1))
    job = distiller(engine, tmp_path, retention_days=30, retention_batch_size=3)

    deleted = await job.delete_expired()

    assert stored_ids(engine) == set(recent)
    assert deleted[TASK].exchanges == len(old)
    assert len(commits) >= 3  # 7 rows, 3 a transaction
    assert deleted_metric(job, "retention") == len(old)


async def test_retention_keeps_the_held_out_exchanges_of_the_live_version(
    engine: Engine, tmp_path: Path
) -> None:
    old = store(engine, 6, days_old=40)
    heldout = old[:2]
    version_id = uuid.uuid4().hex
    with Session(engine) as session, session.begin():
        task = session.get(Task, TASK)
        assert task is not None
        task.active_version_id = version_id
        session.add(
            StudentVersion(
                id=version_id,
                task=TASK,
                number=1,
                state="published",
                base_model="tiny",
                adapter_name="triage-v1",
                adapter_path="/adapters/triage/v1",
                evaluation={"heldout": [[heldout[0], True], [heldout[1], False]]},
            )
        )

    await distiller(engine, tmp_path, retention_days=30).delete_expired()

    assert stored_ids(engine) == set(heldout)


async def test_a_tasks_own_retention_wins_over_the_setting(engine: Engine, tmp_path: Path) -> None:
    short = store(engine, 2, days_old=10, task="short")
    long = store(engine, 2, days_old=100, task="long")
    default = store(engine, 2, days_old=10, task="default-rule")
    with Session(engine) as session, session.begin():
        for name, days in (("short", 5.0), ("long", 365.0)):
            row = session.get(Task, name)
            assert row is not None
            row.retention_days = days

    await distiller(engine, tmp_path, retention_days=30).delete_expired()

    remaining = stored_ids(engine)
    assert not remaining & set(short)
    assert remaining >= set(long) | set(default)


async def test_without_any_retention_nothing_is_deleted(engine: Engine, tmp_path: Path) -> None:
    kept = store(engine, 3, days_old=3650)

    assert await distiller(engine, tmp_path).delete_expired() == {}
    assert stored_ids(engine) == set(kept)


async def test_retention_deletes_the_shadow_results_of_expired_exchanges(
    engine: Engine, tmp_path: Path
) -> None:
    old = store(engine, 2, days_old=40)
    recent = store(engine, 1, days_old=1)
    with Session(engine) as session, session.begin():
        for exchange_id in [*old, *recent]:
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task=TASK,
                    version_id="v",
                    kind="shadow",
                    exchange_id=exchange_id,
                    input_text="user: question",
                    agrees=True,
                    score=1.0,
                    student_answer="billing",
                    teacher_answer="billing",
                )
            )

    deleted = await distiller(engine, tmp_path, retention_days=30).delete_expired()

    with Session(engine) as session:
        left = set(session.exec(select(ShadowResult.exchange_id)).all())
    assert left == set(recent)
    assert deleted[TASK].shadow_results == 2


def test_the_next_curation_does_not_see_deleted_exchanges(engine: Engine, tmp_path: Path) -> None:
    mine = store(engine, 30, days_old=1, user="alice", text="alice asks")
    theirs = store(engine, 30, days_old=1, user="bob", text="bob asks")
    job = distiller(engine, tmp_path)

    delete_exchanges(engine=engine, selection=ExchangeFilter(user="alice"))

    curated = curate(job.pipeline.exchanges(TASK), CurationConfig(near_duplicate_threshold=None))
    seen = {example.exchange_id for example in [*curated.train, *curated.heldout]}
    assert seen == set(theirs)
    assert not seen & set(mine)


async def test_new_pairs_still_make_a_task_due_after_retention_deleted_what_it_trained_on(
    engine: Engine, tmp_path: Path
) -> None:
    store(engine, 10, days_old=40)
    with Session(engine) as session:
        session.add(
            TrainingRun(
                id=uuid.uuid4().hex,
                task=TASK,
                state="succeeded",
                exchanges_seen=10,
                created_at=NOW - timedelta(days=39),
                started_at=NOW - timedelta(days=39),
            )
        )
        session.commit()
    job = distiller(engine, tmp_path, retention_days=30, distill_first_pairs=5)
    await job.delete_expired()
    store(engine, 4, days_old=0.5)
    assert job.due_tasks() == []

    store(engine, 1, days_old=0.1, text="another question")

    assert job.due_tasks() == [TASK]
