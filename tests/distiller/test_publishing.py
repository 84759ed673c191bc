"""The publish gate against a vLLM-speaking student server, a task's own target for it,
and two distillers sharing one Postgres store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from core.embedding import Encoder
from core.evaluation import read_evaluation
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate, StudentVersion, Task, TaskTransition
from distiller import registry
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.datasets import clinc150_banking20
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


def exchange(text: str, answer: str) -> ExchangeCreate:
    return ExchangeCreate(
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
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ]
        },
        latency_ms=10.0,
    )


def pairs(count: int) -> list[ExchangeCreate]:
    return [
        exchange(f"alpha request {n}", "yes") if n % 2 else exchange(f"beta request {n}", "no")
        for n in range(count)
    ]


def noisy_intent_pairs() -> list[ExchangeCreate]:
    """Banking intents whose teacher names the wrong one every sixth time: a classifier
    agrees with it on about 79% of held-out traffic, and on 80% of nearly all of it, but on
    95% of under a tenth."""
    intents = clinc150_banking20()["intents"][:4]
    rows = [row for row in clinc150_banking20()["train"] if row[1] in intents]
    exchanges = []
    for n, (text, intent) in enumerate(rows):
        named = intents[(intents.index(intent) + (n % 6 == 0)) % len(intents)]
        exchanges.append(exchange(text, named.replace("_", " ").title()))
    return exchanges


def pipeline(
    database_url: str,
    data_dir: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    client: httpx.AsyncClient,
    engines: list[Engine],
    **overrides: Any,
) -> Pipeline:
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "base_model": str(tiny_model),
        "student_backend": "vllm",
        "student_url": vllm.url,
        "train_min_pairs": 20,
        "heldout_percent": 40,  # enough held-out pairs to show the target (a lower bound)
        "distill_first_pairs": 60,
        "lora_epochs": 4,
        "lora_learning_rate": 5e-3,
        "target_agreement": 0.9,
        "student_kinds": ["lora"],
    }
    settings = Settings(**{**values, **overrides})
    engine = create_store_engine(database_url)
    engines.append(engine)
    create_tables(engine)
    return Pipeline(
        settings=settings,
        engine=engine,
        backend=StudentReplicas([HttpStudentBackend(vllm.url, client)]),
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


async def distil_noisy_intents(line: Pipeline, **task: Any) -> StudentVersion:
    """One training run of the noisy intent task, whose row first gets ``task``'s values."""
    insert_exchanges(engine=line.engine, exchanges=noisy_intent_pairs())
    with Session(line.engine) as session:
        row = session.get(Task, TASK)
        assert row is not None
        for name, value in task.items():
            setattr(row, name, value)
        session.add(row)
        session.commit()
    run = queue_training(engine=line.engine, task=TASK)
    assert registry.claim_run(engine=line.engine, run_id=run.id)
    version = await line.run(run)
    assert version is not None
    return version


@pytest.mark.parametrize(
    ("setting", "own", "published"),
    [
        pytest.param(0.95, 0.7, True, id="lower-own-target-publishes"),
        pytest.param(0.7, 0.95, False, id="stricter-own-target-rejects"),
    ],
)
async def test_a_tasks_own_target_decides_calibration_and_the_gate_over_the_setting(
    sqlite_url: str,
    tmp_path: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    engines: list[Engine],
    setting: float,
    own: float,
    published: bool,
) -> None:
    async with httpx.AsyncClient() as client:
        line = pipeline(
            sqlite_url,
            tmp_path / "data",
            tiny_model,
            vllm,
            encoder,
            client,
            engines,
            student_kinds=["classifier"],
            target_agreement=setting,
            publish_min_share=0.5,
        )
        version = await distil_noisy_intents(line, target_agreement=own)
    evaluation = read_evaluation(version)
    assert evaluation.target == own, "calibrated for the task's own target"
    if published:
        assert (version.retained_agreement or 0.0) >= own
        assert version.state == "published", version.reason
        assert (version.retained_share or 0.0) >= 0.9
        with Session(line.engine) as session:
            task = session.get(Task, TASK)
            assert task is not None
            assert (task.mode, task.active_version_id) == ("off", version.id)
            assert session.exec(select(TaskTransition)).all() == [], "no auto-ramp: mode stays"
    else:
        assert version.state == "rejected"
        assert version.reason is not None
        assert f"reaches {own:.0%} agreement" in version.reason


async def test_publishing_to_an_auto_ramp_task_starts_it_again_from_shadow(
    sqlite_url: str,
    tmp_path: Path,
    tiny_model: Path,
    vllm: FakeVllm,
    encoder: Encoder,
    engines: list[Engine],
) -> None:
    async with httpx.AsyncClient() as client:
        line = pipeline(
            sqlite_url,
            tmp_path / "data",
            tiny_model,
            vllm,
            encoder,
            client,
            engines,
            student_kinds=["classifier"],
            target_agreement=0.7,
        )
        with Session(line.engine) as session:
            session.add(
                StudentVersion(
                    id="1" * 32,
                    task=TASK,
                    number=1,
                    kind="classifier",
                    state="published",
                    base_model="-",
                    adapter_name=f"{TASK}-v1",
                    adapter_path="-",
                    confidence_threshold=-0.1,
                    retained_share=0.1,
                )
            )
            session.commit()
        version = await distil_noisy_intents(
            line, auto_ramp=True, mode="live", cutover_percent=50.0, active_version_id="1" * 32
        )
    assert (version.number, version.state) == (2, "published")
    with Session(line.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert (task.mode, task.cutover_percent) == ("shadow", 0.0)
        [transition] = session.exec(select(TaskTransition)).all()
    assert transition.cause == "publish"
    assert (transition.from_mode, transition.from_cutover_percent) == ("live", 50.0)
    assert (transition.to_mode, transition.to_cutover_percent) == ("shadow", 0.0)
    assert transition.reason == "v2 published in place of v1; auto-ramp starts it again from shadow"


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
