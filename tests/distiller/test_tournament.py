"""The tournament between student kinds: which kinds a task gets, which one is published,
and that the loser stays in the registry with its figures for an operator to choose."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.embedding import Encoder
from core.evaluation import read_evaluation
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate, StudentHead, StudentVersion, Task, TaskTransition
from distiller import candidates, registry, tournament
from distiller import pipeline as pipeline_module
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.datasets import clinc150_banking20
from distiller.pipeline import Pipeline, kinds_for

from fakes.vllm import FakeVllm
from servers import ServerThread

TASK = "intents"
INTENTS = clinc150_banking20()["intents"][:4]


def version(number: int, kind: str, share: float, threshold: float | None = -0.1) -> Any:
    return StudentVersion(
        id=uuid.uuid4().hex,
        task=TASK,
        number=number,
        kind=kind,
        base_model="-",
        adapter_name=f"{TASK}-v{number}",
        adapter_path="-",
        confidence_threshold=threshold,
        retained_share=share,
    )


def test_the_kind_serving_more_traffic_at_target_wins() -> None:
    classifier, lora = version(1, "classifier", 0.63), version(2, "lora", 0.9)
    assert tournament.winner([classifier, lora]) is lora
    reason = tournament.loss_reason(classifier, lora, 0.95)
    assert reason == (
        "lost the tournament to v2 (lora): 63% vs 90% of held-out traffic at 95% agreement"
    )


def test_a_tie_goes_to_the_classifier_which_is_cheaper_to_serve() -> None:
    lora, classifier = version(1, "lora", 0.8), version(2, "classifier", 0.8)
    assert tournament.winner([lora, classifier]) is classifier
    assert "cheaper to serve" in tournament.loss_reason(lora, classifier, 0.95)


def test_a_version_without_a_threshold_serves_nothing_at_target() -> None:
    uncalibrated = version(1, "classifier", 0.9, threshold=None)
    lora = version(2, "lora", 0.3)
    assert tournament.share_at_target(uncalibrated) == 0.0
    assert tournament.winner([uncalibrated, lora]) is lora


def test_only_label_like_tasks_get_a_classifier() -> None:
    both = ["lora", "classifier"]
    assert kinds_for("label", both) == ["classifier", "lora"]
    assert kinds_for("json", both) == ["lora"]
    assert kinds_for("text", both) == ["lora"]
    assert kinds_for("label", ["classifier"]) == ["classifier"]
    assert kinds_for("text", ["classifier"]) == []


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


def exchange(text: str, answer: str) -> ExchangeCreate:
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task=TASK,
        served_by="teacher",
        status="ok",
        http_status=200,
        model="gpt-4o-mini",
        request={
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Name the banking intent."},
                {"role": "user", "content": text},
            ],
        },
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


def intent_pairs(per_intent: int = 30) -> list[ExchangeCreate]:
    rows = [row for row in clinc150_banking20()["train"] if row[1] in INTENTS]
    taken: dict[str, int] = {}
    pairs = []
    for text, intent in rows:
        if taken.get(intent, 0) < per_intent:
            taken[intent] = taken.get(intent, 0) + 1
            pairs.append(exchange(text, intent.replace("_", " ").title()))
    return pairs


def free_text_pairs(count: int = 80) -> list[ExchangeCreate]:
    rows = clinc150_banking20()["train"][:count]
    return [exchange(text, f"Thanks for asking about '{text}'; here is how.") for text, _ in rows]


@pytest.fixture
async def pipeline(
    sqlite_url: str, tmp_path: Path, tiny_model: Path, vllm: FakeVllm, encoder: Encoder
) -> AsyncIterator[Any]:
    engines: list[Engine] = []
    clients: list[httpx.AsyncClient] = []

    def build(**overrides: Any) -> Pipeline:
        values: dict[str, Any] = {
            "database_url": sqlite_url,
            "data_dir": tmp_path / "data",
            "base_model": str(tiny_model),
            "student_backend": "vllm",
            "student_url": vllm.url,
            "train_min_pairs": 20,
            "heldout_percent": 20,
            "lora_epochs": 1,
            "target_agreement": 0.9,
        }
        values.update(overrides)
        settings = Settings(**values)
        engine = create_store_engine(settings.database_url)
        engines.append(engine)
        create_tables(engine)
        client = httpx.AsyncClient()
        clients.append(client)
        return Pipeline(
            settings=settings,
            engine=engine,
            backend=StudentReplicas([HttpStudentBackend(vllm.url, client)]),
            encoder=encoder,
        )

    yield build
    for client in clients:
        await client.aclose()
    for engine in engines:
        engine.dispose()


async def train(line: Pipeline, exchanges: list[ExchangeCreate]) -> StudentVersion | None:
    insert_exchanges(engine=line.engine, exchanges=exchanges)
    run = queue_training(engine=line.engine, task=TASK)
    assert registry.claim_run(engine=line.engine, run_id=run.id)
    return await line.run(run)


def versions(line: Pipeline) -> list[StudentVersion]:
    with Session(line.engine) as session:
        return list(registry.list_versions(session=session, task=TASK))


async def test_label_task_trains_both_kinds_and_publishes_the_classifier(
    pipeline: Any, vllm: FakeVllm, database_url: str
) -> None:
    line = pipeline(database_url=database_url)
    published = await train(line, intent_pairs())
    assert published is not None
    classifier, lora = versions(line)
    assert (classifier.kind, classifier.state) == ("classifier", "published")
    assert published.id == classifier.id
    assert (lora.kind, lora.state) == ("lora", "rejected")
    assert lora.reason is not None
    assert lora.reason.startswith("lost the tournament to v1 (classifier): ")
    figures = read_evaluation(classifier).tournament
    assert figures is not None
    assert figures == read_evaluation(lora).tournament
    assert [e.kind for e in figures.entrants] == ["classifier", "lora"]
    assert figures.winner == 1
    for v in (classifier, lora):
        evaluation = read_evaluation(v)
        assert (evaluation.training_seconds or 0) > 0
        assert (evaluation.latency_p50_ms or 0) > 0
        assert evaluation.heldout
        assert evaluation.target == 0.9
    assert classifier.metric == "label"
    assert classifier.confidence_threshold is not None
    assert (classifier.retained_share or 0) >= tournament.share_at_target(lora)
    assert vllm.adapters == {}, "a classifier needs nothing of the student server"
    with Session(line.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert (task.shape, task.label_count, task.active_version_id) == (
            "label",
            len(INTENTS),
            classifier.id,
        )
        assert session.get(StudentHead, classifier.id) is not None
        assert session.get(StudentHead, lora.id) is None


async def test_operator_can_publish_the_loser_and_roll_back_to_the_winner(
    pipeline: Any, vllm: FakeVllm
) -> None:
    line = pipeline()
    await train(line, intent_pairs())
    chosen = await registry.publish_chosen(
        engine=line.engine, backend=line.backend, task=TASK, version="v2"
    )
    assert (chosen.kind, chosen.state) == ("lora", "published")
    assert list(vllm.adapters) == [f"{TASK}-v2"]
    assert [v.state for v in versions(line)] == ["retired", "published"]
    back = await registry.rollback(engine=line.engine, backend=line.backend, task=TASK)
    assert (back.number, back.kind) == (1, "classifier")
    assert [v.state for v in versions(line)] == ["published", "retired"]
    assert transitions(line) == [], "without auto-ramp, the mode is the operator's"


async def test_publishing_and_rolling_back_an_auto_ramp_task_start_it_again_from_shadow(
    pipeline: Any,
) -> None:
    line = pipeline()
    await train(line, intent_pairs())
    live(line, 50.0, auto_ramp=True)
    await registry.publish_chosen(engine=line.engine, backend=line.backend, task=TASK, version="v2")
    live(line, 25.0)
    await registry.rollback(engine=line.engine, backend=line.backend, task=TASK)
    made = [(t.cause, t.from_mode, t.from_cutover_percent, t.to_mode) for t in transitions(line)]
    assert made == [("publish", "live", 50.0, "shadow"), ("rollback", "live", 25.0, "shadow")]
    reasons = [t.reason for t in transitions(line)]
    assert reasons == [
        "v2 published in place of v1; auto-ramp starts it again from shadow",
        "rolled back from v2 to v1; auto-ramp starts it again from shadow",
    ]


def live(line: Pipeline, cutover: float, **values: Any) -> None:
    """Put the task live at ``cutover`` directly in the store, as an earlier stage left it."""
    with Session(line.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        task.mode, task.cutover_percent = "live", cutover
        for name, value in values.items():
            setattr(task, name, value)
        session.add(task)
        session.commit()


def transitions(line: Pipeline) -> list[TaskTransition]:
    with Session(line.engine) as session:
        query = select(TaskTransition).order_by(col(TaskTransition.created_at))
        return list(session.exec(query).all())


async def test_free_text_task_gets_only_a_lora_student(pipeline: Any) -> None:
    line = pipeline()
    await train(line, free_text_pairs())
    [only] = versions(line)
    assert only.kind == "lora"
    assert "tournament" not in only.evaluation


async def test_shape_settings_decide_what_counts_as_label_like(pipeline: Any) -> None:
    line = pipeline(label_max_distinct=len(INTENTS) - 1)
    await train(line, intent_pairs())
    assert [v.kind for v in versions(line)] == ["lora"]
    with Session(line.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert (task.shape, task.label_count) == ("text", None)


async def test_classifier_alone_on_a_free_text_task_trains_nothing_and_says_why(
    pipeline: Any,
) -> None:
    line = pipeline(student_kinds=["classifier"])
    assert await train(line, free_text_pairs()) is None
    assert versions(line) == []
    with Session(line.engine) as session:
        [run] = registry.list_runs(session=session, task=TASK)
    assert run.state == "failed"
    assert run.error is not None
    assert "classifier student serves label-like tasks only" in run.error
    assert "STILLROOM_STUDENT_KINDS=classifier" in run.error


async def test_classifier_alone_is_trained_in_seconds_without_a_base_model(
    pipeline: Any, tmp_path: Path
) -> None:
    line = pipeline(student_kinds=["classifier"], base_model=str(tmp_path / "no-such-model"))
    published = await train(line, intent_pairs())
    assert published is not None
    assert (published.kind, published.state) == ("classifier", "published")
    assert stored(published.adapter_path)


def stored(path: str) -> bool:
    return Path(path).is_file()


def serving_kind(line: Pipeline) -> str | None:
    """The kind of the task's live version, as routing would read it now."""
    with Session(line.engine) as session:
        live = registry.active_version(session=session, task=TASK)
        return live.kind if live is not None else None


async def test_the_classifier_serves_while_the_lora_student_trains(
    pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = pipeline()
    seen: list[str | None] = []

    def lora_candidate(**arguments: Any) -> Any:
        seen.append(serving_kind(line))
        return candidates.lora_candidate(**arguments)

    monkeypatch.setattr(pipeline_module, "lora_candidate", lora_candidate)
    published = await train(line, intent_pairs())

    assert seen == ["classifier"]
    assert published is not None
    assert (published.kind, published.state) == ("classifier", "published")


async def test_a_slower_student_serving_more_at_target_replaces_the_first(
    pipeline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = pipeline()

    def lora_candidate(**arguments: Any) -> Any:
        trained = candidates.lora_candidate(**arguments)
        better = dataclasses.replace(
            trained.evaluation.calibration, threshold=-5.0, retained_share=1.0
        )
        evaluation = dataclasses.replace(trained.evaluation, calibration=better)
        return dataclasses.replace(trained, evaluation=evaluation)

    monkeypatch.setattr(pipeline_module, "lora_candidate", lora_candidate)
    published = await train(line, intent_pairs())

    assert published is not None
    assert (published.kind, published.state) == ("lora", "published")
    classifier, lora = versions(line)
    assert (classifier.state, lora.state) == ("retired", "published")
    assert serving_kind(line) == "lora"
