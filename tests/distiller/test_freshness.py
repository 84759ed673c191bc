"""Fresh data: a `train` asked for while a run is in progress queues a follow-up run that
trains on everything stored by the time it starts, and a version trained on a fraction of
the pairs stored when it finished gets a retraining queued at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.embedding import Encoder
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate, TrainingRun
from distiller import registry
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.datasets import clinc150_banking20
from distiller.pipeline import Pipeline
from distiller.scheduler import Distiller

TASK = "intents"
INTENTS = clinc150_banking20()["intents"][:4]
ROWS = [row for row in clinc150_banking20()["train"] if row[1] in INTENTS]


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def store_pairs(engine: Engine, rows: list[tuple[str, str]]) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[
            ExchangeCreate(
                id=uuid.uuid4().hex,
                task=TASK,
                served_by="teacher",
                status="ok",
                http_status=200,
                model="gpt-4o-mini",
                request={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
                response={
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": intent},
                            "finish_reason": "stop",
                        }
                    ]
                },
                latency_ms=10.0,
            )
            for text, intent in rows
        ],
    )


def distiller(engine: Engine, tmp_path: Path) -> Distiller:
    settings = Settings(
        data_dir=tmp_path / "data",
        student_kinds=["classifier"],
        train_min_pairs=20,
        target_agreement=0.8,
    )
    # A classifier is published into the store: no student server is asked.
    unused = StudentReplicas([HttpStudentBackend("http://127.0.0.1:9", httpx.AsyncClient())])
    return Distiller(Pipeline(settings=settings, engine=engine, backend=unused, encoder=Encoder()))


def run_of(engine: Engine, run_id: str) -> TrainingRun:
    with Session(engine) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        return run


def test_train_during_a_run_queues_a_follow_up_instead_of_returning_the_running_one(
    engine: Engine,
) -> None:
    store_pairs(engine, ROWS[:10])
    scheduled = queue_training(engine=engine, task=TASK, trigger="schedule")
    assert registry.claim_run(engine=engine, run_id=scheduled.id)
    follow_up = queue_training(engine=engine, task=TASK)
    assert follow_up.id != scheduled.id
    assert (follow_up.state, follow_up.trigger) == ("queued", "manual")
    again = queue_training(engine=engine, task=TASK)
    assert again.id == follow_up.id, "one follow-up is enough: it will see every pair"


async def test_the_follow_up_run_trains_on_the_pairs_that_arrived_during_the_first(
    engine: Engine, tmp_path: Path
) -> None:
    store_pairs(engine, ROWS[:150])
    scheduled = queue_training(engine=engine, task=TASK, trigger="schedule")
    assert registry.claim_run(engine=engine, run_id=scheduled.id)  # in progress elsewhere
    store_pairs(engine, ROWS[150:])
    follow_up = queue_training(engine=engine, task=TASK)

    [version] = await distiller(engine, tmp_path).run_queued()

    assert version is not None
    run = run_of(engine, follow_up.id)
    assert run.state == "succeeded", run.error
    assert run.exchanges_seen == len(ROWS)
    assert run.curation["train"] + run.curation["heldout"] > 150


def test_a_version_trained_on_under_80_percent_of_the_pairs_is_retrained(
    engine: Engine, tmp_path: Path
) -> None:
    store_pairs(engine, ROWS[:100])
    line = distiller(engine, tmp_path)
    retrain = line.retrain_if_stale(TASK, trained_on=79)
    assert retrain is not None
    assert (retrain.state, retrain.trigger) == ("queued", "stale")


def test_a_version_trained_on_most_of_the_pairs_is_left_alone(
    engine: Engine, tmp_path: Path
) -> None:
    store_pairs(engine, ROWS[:100])
    assert distiller(engine, tmp_path).retrain_if_stale(TASK, trained_on=80) is None
