"""The publish gate against a vLLM-speaking student server, and two distillers sharing one
Postgres store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.embedding import Encoder
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate, Task
from distiller import registry
from distiller.backends import HttpStudentBackend
from distiller.pipeline import Pipeline
from distiller.scheduler import Distiller

from fakes.vllm import FakeVllm
from servers import ServerThread

TASK = "yes-no"


@pytest.fixture
def vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    """Engines the test's pipelines opened, disposed of afterwards."""
    opened: list[Engine] = []
    yield opened
    for engine in opened:
        engine.dispose()


def pairs(count: int) -> list[ExchangeCreate]:
    exchanges = []
    for n in range(count):
        word, label = ("alpha", "yes") if n % 2 else ("beta", "no")
        exchanges.append(
            ExchangeCreate(
                id=uuid.uuid4().hex,
                task=TASK,
                served_by="teacher",
                status="ok",
                http_status=200,
                model="gpt-4o-mini",
                request={
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"{word} request {n}"}],
                },
                response={
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": label},
                            "finish_reason": "stop",
                        }
                    ]
                },
                latency_ms=10.0,
            )
        )
    return exchanges


def pipeline(
    database_url: str,
    data_dir: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    client: httpx.AsyncClient,
    engines: list[Engine],
) -> Pipeline:
    settings = Settings(
        database_url=database_url,
        data_dir=data_dir,
        base_model=str(tiny_model),
        student_backend="vllm",
        student_url=vllm.url,
        train_min_pairs=20,
        heldout_percent=25,
        distill_first_pairs=60,
        lora_epochs=4,
        lora_learning_rate=5e-3,
        target_agreement=0.9,
        student_kinds=["lora"],
    )
    engine = create_store_engine(database_url)
    engines.append(engine)
    create_tables(engine)
    return Pipeline(
        settings=settings,
        engine=engine,
        backend=HttpStudentBackend(vllm.url, client),
        encoder=encoder,
    )


async def test_adapter_the_student_server_refuses_is_not_published(
    sqlite_url: str,
    tmp_path: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    engines: list[Engine],
) -> None:
    async with httpx.AsyncClient() as client:
        line = pipeline(sqlite_url, tmp_path / "data", tiny_model, vllm, encoder, client, engines)
        insert_exchanges(engine=line.engine, exchanges=pairs(100))
        adapter = (tmp_path / "data" / "adapters" / TASK / "v1").resolve()
        vllm.load_errors[str(adapter)] = "Loading lora yes-no-v1 failed: invalid weights"
        run = queue_training(engine=line.engine, task=TASK)
        assert registry.claim_run(engine=line.engine, run_id=run.id)
        version = await line.run(run)
    assert version is not None
    assert version.state == "rejected"
    assert version.reason is not None
    assert "invalid weights" in version.reason
    with Session(line.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert task.active_version_id is None


async def test_adapter_that_answers_nothing_fails_its_health_check(
    sqlite_url: str,
    tmp_path: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    engines: list[Engine],
) -> None:
    vllm.answers[f"{TASK}-v1"] = ""
    async with httpx.AsyncClient() as client:
        line = pipeline(sqlite_url, tmp_path / "data", tiny_model, vllm, encoder, client, engines)
        insert_exchanges(engine=line.engine, exchanges=pairs(100))
        run = queue_training(engine=line.engine, task=TASK)
        assert registry.claim_run(engine=line.engine, run_id=run.id)
        version = await line.run(run)
    assert version is not None
    assert version.state == "rejected"
    assert "health check" in (version.reason or "")
    metrics = line.metrics.registry
    runs = {"task": TASK, "outcome": "rejected"}
    assert metrics.get_sample_value("stillroom_training_runs_total", runs) == 1
    kind = {"task": TASK, "kind": version.kind}
    assert metrics.get_sample_value("stillroom_versions_published_total", kind) == 0


@pytest.mark.postgres
async def test_two_distillers_on_one_store_train_a_task_once(
    postgres_url: str,
    tmp_path: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    engines: list[Engine],
) -> None:
    async with httpx.AsyncClient() as client:
        lines = [
            pipeline(
                postgres_url, tmp_path / f"data{n}", tiny_model, vllm, encoder, client, engines
            )
            for n in range(2)
        ]
        insert_exchanges(engine=lines[0].engine, exchanges=pairs(100))
        distillers = [Distiller(line) for line in lines]
        queued = await asyncio.gather(*(d.queue_due_tasks() for d in distillers))
        assert {run.id for runs in queued for run in runs} == {queued[0][0].id}
        outcomes: list[Any] = await asyncio.gather(*(d.run_queued() for d in distillers))
    trained = [version for results in outcomes for version in results]
    assert len(trained) == 1
    with Session(lines[0].engine) as session:
        versions = registry.list_versions(session=session, task=TASK)
        runs = registry.list_runs(session=session, task=TASK)
    assert len(versions) == 1
    assert len(runs) == 1
    assert versions[0].state == "published"
    assert list(vllm.adapters) == [f"{TASK}-v1"]
