"""Capture never blocks or loses an exchange: store outages, shutdown, crashed spills."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from core.settings import Settings
from core.tables import ExchangeCreate

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import TcpRelay, stored_exchanges, wait_until

MESSAGES = [{"role": "user", "content": "Where is my parcel?"}]


@pytest.fixture
def relay(postgres_url: str) -> Iterator[tuple[TcpRelay, str]]:
    """The test's Postgres database behind a relay the test can take down."""
    url = sa.make_url(postgres_url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 5432)
    relay.up()
    yield relay, url.set(port=relay.port).render_as_string(hide_password=False)
    relay.close()


@pytest.mark.postgres
def test_store_down_then_back_loses_no_exchange(
    relay: tuple[TcpRelay, str],
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    tcp, url = relay
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", database_url=url))
    client = proxy.client()
    for number in range(5):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"before {number}"}]
        )
    stored_exchanges(proxy.engine, 5)

    tcp.down()
    for number in range(20):
        answer = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"during {number}"}]
        )
        assert answer.choices[0].message.content == f"Answer to: during {number}"
    metrics = proxy.runtime.metrics
    wait_until(lambda: metrics.capture_spilled._value.get() > 0)

    tcp.up()
    exchanges = stored_exchanges(proxy.engine, 25, timeout=20)
    contents = sorted(e.request["messages"][0]["content"] for e in exchanges)
    assert len(exchanges) == 25
    assert contents == sorted(
        [f"before {n}" for n in range(5)] + [f"during {n}" for n in range(20)]
    )
    spill_dir = proxy.settings.data_dir / "spill"
    wait_until(lambda: not list(spill_dir.glob("exchanges-*")))


def test_clean_shutdown_writes_every_queued_exchange(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    settings = make_settings(
        teacher_url=teacher.url + "/v1", capture_batch_size=1000, capture_flush_seconds=60
    )
    proxy = start_proxy(settings)
    client = proxy.client()
    for number in range(12):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{number}"}]
        )
    proxy.server.stop()
    assert len(stored_exchanges(proxy.engine, 12, timeout=1)) == 12


def _spill_file(directory: Path, pid: int, exchange: ExchangeCreate) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"exchanges-{pid}-deadbeef.jsonl"
    path.write_text(exchange.model_dump_json() + "\n")
    return path


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_spill_left_by_a_crashed_process_is_written_at_start(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    settings = make_settings(teacher_url=teacher.url + "/v1")
    exchange = ExchangeCreate(
        id="0" * 32,
        task="left-behind",
        created_at=datetime.now(UTC),
        served_by="teacher",
        status="ok",
        http_status=200,
        request={"model": "gpt-4o-mini", "messages": MESSAGES},
        latency_ms=12.5,
    )
    path = _spill_file(settings.data_dir / "spill", _dead_pid(), exchange)
    proxy = start_proxy(settings)
    [stored] = stored_exchanges(proxy.engine, 1)
    assert stored.id == exchange.id
    assert stored.task == "left-behind"
    wait_until(lambda: not path.exists() and not path.with_suffix(".jsonl.replaying").exists())


@pytest.mark.postgres
def test_a_row_the_store_refuses_is_set_aside_and_the_rest_written(
    postgres_url: str,
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", database_url=postgres_url))
    good = ExchangeCreate(
        id="1" * 32,
        task="fine",
        served_by="teacher",
        status="ok",
        http_status=200,
        request={"model": "m", "messages": MESSAGES},
        latency_ms=1.0,
    )
    # Postgres cannot store NUL characters in JSON documents.
    refused = good.model_copy(
        update={"id": "2" * 32, "request": {"messages": [{"role": "user", "content": "a\x00b"}]}}
    )
    capture = proxy.runtime.capture
    capture.submit(good)
    capture.submit(refused)
    [stored] = stored_exchanges(proxy.engine, 1)
    assert stored.id == good.id
    rejected = proxy.settings.data_dir / "spill" / "rejected.jsonl"
    wait_until(rejected.exists)
    assert json.loads(rejected.read_text().splitlines()[0])["id"] == refused.id
    assert proxy.runtime.metrics.capture_rejected._value.get() == 1


def test_exchanges_from_concurrent_requests_land_once_each(
    database_url: str,
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", database_url=database_url))
    client = proxy.client()
    prompts = [f"question {n}" for n in range(40)]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda text: client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
                ),
                prompts,
            )
        )
    exchanges = stored_exchanges(proxy.engine, 40)
    assert sorted(e.request["messages"][0]["content"] for e in exchanges) == sorted(prompts)
    assert len({e.id for e in exchanges}) == 40


def test_a_store_missing_a_column_is_a_schema_fault_not_an_outage(
    database_url: str,
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", database_url=database_url))
    metrics = proxy.runtime.metrics
    with proxy.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE exchanges DROP COLUMN origin"))

    answer = proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert answer.choices[0].message.content == "Answer to: Where is my parcel?"
    # Retried every capture_retry_seconds, and logged once.
    wait_until(lambda: metrics.capture_schema_errors._value.get() >= 2)
    faults = [r for r in caplog.records if r.name == "stillroom.capture" and r.levelname == "ERROR"]
    assert len(faults) == 1
    assert "origin" in faults[0].getMessage()
    assert not any("unreachable" in r.getMessage() for r in caplog.records)
    assert metrics.store_up._value.get() == 1
    assert metrics.capture_spilled._value.get() == 1
    assert metrics.capture_rejected._value.get() == 0
    assert "origin" in str(proxy.runtime.capture.schema_fault)

    with proxy.engine.begin() as connection:
        connection.execute(
            sa.text("ALTER TABLE exchanges ADD COLUMN origin VARCHAR(16) DEFAULT 'client' NOT NULL")
        )
    [stored] = stored_exchanges(proxy.engine, 1)
    assert stored.request["messages"] == MESSAGES
    wait_until(lambda: proxy.runtime.capture.schema_fault is None)
