"""The store on real SQLite and real Postgres: tables, exchanges and the tasks they create."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from core.errors import ConfigurationError
from core.store import (
    count_exchanges,
    create_store_engine,
    create_tables,
    get_task,
    insert_exchanges,
    list_exchanges,
    list_tasks,
    normalise_database_url,
)
from core.tables import ExchangeCreate

from store_support import race_create_tables

T = TypeVar("T")

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make_exchange(
    number: int,
    *,
    task: str = "tickets",
    model: str = "gpt-4o-mini",
    derived: bool = False,
    **fields: Any,
) -> ExchangeCreate:
    values: dict[str, Any] = {
        "id": f"ex{number:04d}",
        "task": task,
        "created_at": START + timedelta(seconds=number),
        "served_by": "teacher",
        "status": "ok",
        "http_status": 200,
        "model": model,
        "request": {"model": model, "messages": [{"role": "user", "content": f"#{number}"}]},
        "response": {"choices": [{"message": {"content": "billing"}}]},
        "finish_reason": "stop",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "cost_usd": 0.0001,
        "latency_ms": 150.0,
        "task_derived": derived,
    }
    values.update(fields)
    return ExchangeCreate(**values)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh store with its tables created."""
    engine = create_store_engine(database_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def in_session(engine: sa.Engine, read: Callable[[Session], T]) -> T:
    with Session(engine) as session:
        return read(session)


def test_create_tables_twice_is_harmless(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1)])

    create_tables(engine)

    assert in_session(engine, lambda s: count_exchanges(session=s)) == 1


def test_insert_exchanges_stores_them(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1), make_exchange(2)])

    stored = in_session(engine, lambda s: list_exchanges(session=s))

    assert [exchange.id for exchange in stored] == ["ex0001", "ex0002"]
    assert stored[0].task == "tickets"
    assert stored[0].served_by == "teacher"
    assert stored[0].finish_reason == "stop"
    assert stored[0].prompt_tokens == 12
    assert stored[0].completion_tokens == 3
    assert stored[0].latency_ms == 150.0


def test_insert_exchanges_creates_their_task_off_with_no_cutover(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1)])

    task = in_session(engine, lambda s: get_task(session=s, name="tickets"))

    assert task is not None
    assert task.mode == "off"
    assert task.cutover_percent == 0.0


def test_task_takes_derived_flag_and_teacher_model_from_first_exchange(
    engine: sa.Engine,
) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[
            make_exchange(1, task="auto-609e7bba", model="gpt-4o-mini", derived=True),
            make_exchange(2, task="auto-609e7bba", model="gpt-4o", derived=False),
        ],
    )

    task = in_session(engine, lambda s: get_task(session=s, name="auto-609e7bba"))

    assert task is not None
    assert task.derived is True
    assert task.teacher_model == "gpt-4o-mini"


def test_task_is_created_once_across_batches(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1, model="gpt-4o-mini")])
    insert_exchanges(engine=engine, exchanges=[make_exchange(2, model="gpt-4o")])

    tasks = in_session(engine, lambda s: list_tasks(session=s))

    assert [(task.name, task.teacher_model) for task in tasks] == [("tickets", "gpt-4o-mini")]


def test_each_task_of_a_batch_is_created(engine: sa.Engine) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[make_exchange(1, task="b-task"), make_exchange(2, task="a-task")],
    )

    tasks = in_session(engine, lambda s: list_tasks(session=s))

    assert [task.name for task in tasks] == ["a-task", "b-task"]


def test_replayed_exchange_is_stored_once(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1), make_exchange(2)])
    insert_exchanges(engine=engine, exchanges=[make_exchange(2), make_exchange(3)])

    stored = in_session(engine, lambda s: list_exchanges(session=s))

    assert [exchange.id for exchange in stored] == ["ex0001", "ex0002", "ex0003"]


def test_same_exchange_twice_in_one_batch_is_stored_once(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1), make_exchange(1)])

    assert in_session(engine, lambda s: count_exchanges(session=s)) == 1


def test_inserting_no_exchanges_does_nothing(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[])

    assert in_session(engine, lambda s: list_tasks(session=s)) == []


def test_count_exchanges_by_task(engine: sa.Engine) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[
            make_exchange(1, task="tickets"),
            make_exchange(2, task="tickets"),
            make_exchange(3, task="invoices"),
        ],
    )

    assert in_session(engine, lambda s: count_exchanges(session=s)) == 3
    assert in_session(engine, lambda s: count_exchanges(session=s, task="tickets")) == 2
    assert in_session(engine, lambda s: count_exchanges(session=s, task="invoices")) == 1
    assert in_session(engine, lambda s: count_exchanges(session=s, task="absent")) == 0


def test_count_exchanges_by_status(engine: sa.Engine) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[
            make_exchange(1, status="ok"),
            make_exchange(2, status="error", http_status=429),
            make_exchange(3, status="aborted"),
        ],
    )

    count = in_session(engine, lambda s: count_exchanges(session=s, statuses=["ok", "error"]))

    assert count == 2


def test_list_exchanges_of_one_task_oldest_first(engine: sa.Engine) -> None:
    insert_exchanges(
        engine=engine,
        exchanges=[
            make_exchange(3, task="tickets"),
            make_exchange(1, task="tickets"),
            make_exchange(2, task="invoices"),
        ],
    )

    stored = in_session(engine, lambda s: list_exchanges(session=s, task="tickets"))

    assert [exchange.id for exchange in stored] == ["ex0001", "ex0003"]


def test_list_exchanges_with_a_limit(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(n) for n in range(1, 6)])

    stored = in_session(engine, lambda s: list_exchanges(session=s, limit=2))

    assert [exchange.id for exchange in stored] == ["ex0001", "ex0002"]


def test_request_and_response_round_trip_as_json_with_unicode(engine: sa.Engine) -> None:
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": 'Ünïcödé ✓ 日本語 🚀 "quoted" \\ back'}],
        "temperature": 0.2,
        "n": 1,
        "stream": False,
        "metadata": {"nested": [1, 2.5, None, True]},
    }
    response = {"choices": [{"message": {"content": "Grüße 👋"}, "logprobs": None}]}
    insert_exchanges(
        engine=engine, exchanges=[make_exchange(1, request=request, response=response)]
    )

    [stored] = in_session(engine, lambda s: list_exchanges(session=s))

    assert stored.request == request
    assert stored.response == response


def test_exchange_without_response_stores_null(engine: sa.Engine) -> None:
    insert_exchanges(engine=engine, exchanges=[make_exchange(1, response=None)])

    [stored] = in_session(engine, lambda s: list_exchanges(session=s))

    assert stored.response is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@db:5432/stillroom", "postgresql+psycopg://u:p@db:5432/stillroom"),
        ("postgresql://u:p@db:5432/stillroom", "postgresql+psycopg://u:p@db:5432/stillroom"),
        ("postgresql+psycopg://db/stillroom", "postgresql+psycopg://db/stillroom"),
        ("sqlite:///./stillroom.db", "sqlite:///./stillroom.db"),
    ],
)
def test_normalise_database_url_uses_psycopg_for_postgres(url: str, expected: str) -> None:
    assert normalise_database_url(url) == expected


def test_unsupported_database_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database"):
        create_store_engine("mysql://root@localhost/stillroom")


def test_unparseable_database_url_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="invalid database URL"):
        create_store_engine("not a url")


def test_sqlite_store_runs_in_wal_mode(sqlite_url: str) -> None:
    engine = create_store_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            mode = connection.execute(sa.text("PRAGMA journal_mode")).scalar_one()
    finally:
        engine.dispose()

    assert mode == "wal"


def test_sqlite_store_creates_the_folder_of_its_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "deeper" / "stillroom.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        create_tables(engine)
    finally:
        engine.dispose()

    assert path.is_file()


def test_create_tables_from_two_threads_at_once_does_not_fail(database_url: str) -> None:
    engines = [create_store_engine(database_url) for _ in range(2)]
    try:
        # A race is a matter of timing: run it a few times, from an empty store each time.
        for _ in range(5):
            empty_the_store(engines[0])
            assert race_create_tables(engines) == []
        insert_exchanges(engine=engines[0], exchanges=[make_exchange(1)])
        assert in_session(engines[1], lambda s: count_exchanges(session=s)) == 1
    finally:
        for engine in engines:
            engine.dispose()


def empty_the_store(engine: sa.Engine) -> None:
    """Drop every table, the one recording the schema's revision included."""
    tables = sa.MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)
