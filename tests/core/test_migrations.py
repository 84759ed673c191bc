"""Schema migrations on real SQLite and real Postgres: a store made by release 683dfd0
upgrades with every row kept, replicas migrate once, a store newer than the build stops
it, and the migrations at head are exactly the models."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import Session, SQLModel

from core import migrations
from core.errors import StoreSchemaError
from core.migrations.upgrade import alembic_config
from core.settings import Settings
from core.store import (
    create_store_engine,
    create_tables,
    get_task,
    list_exchanges,
    schema_revision,
    schema_status,
)
from core.tables import StudentHead, StudentVersion
from router.policy import load_policies

from store_support import race_create_tables

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SQLITE_DUMP = FIXTURES / "store_683dfd0.sqlite.sql"
POSTGRES_DUMP = FIXTURES / "store_683dfd0.postgres.sql"

# Rows of the release store (see fixtures/make_release_store.py).
PUBLISHED = "a1" * 16
REJECTED = "b2" * 16
CLIENT_EXCHANGES = ["e1" * 16, "e2" * 16, "e4" * 16]
AUDIT_EXCHANGE = "e3" * 16

RELEASE_ROWS = {
    "drift_reports": 1,
    "exchanges": 4,
    "shadow_results": 2,
    "student_heads": 1,
    "student_versions": 2,
    "tasks": 2,
    "training_runs": 2,
}

Rows = dict[str, list[dict[str, Any]]]


def load_release_dump(url: str) -> None:
    """Fill an empty store with the dump of the store release 683dfd0 made."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        with closing(sqlite3.connect(str(parsed.database))) as connection:
            connection.executescript(SQLITE_DUMP.read_text())
        return
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(POSTGRES_DUMP.read_text().encode())


@pytest.fixture
def store(database_url: str) -> Iterator[sa.Engine]:
    """An engine on an empty store."""
    engine = create_store_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def release_store(database_url: str, store: sa.Engine) -> sa.Engine:
    """An engine on the store release 683dfd0 made, not yet upgraded."""
    load_release_dump(database_url)
    return store


def stored_rows(engine: sa.Engine) -> Rows:
    """Every row of every table but the revision's, as the driver reads it, by primary key."""
    inspector = sa.inspect(engine)
    rows: Rows = {}
    with engine.connect() as connection:
        for table in inspector.get_table_names():
            if table == migrations.VERSION_TABLE:
                continue
            keys = ", ".join(inspector.get_pk_constraint(table)["constrained_columns"])
            result = connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {keys}")
            rows[table] = [dict(row._mapping) for row in result]
    return rows


def model_differences(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, SQLModel.metadata))


def described_schema(engine: sa.Engine) -> dict[str, Any]:
    """Tables, columns (type, null, default), keys and indexes, as the store reports them."""
    inspector = sa.inspect(engine)
    described = {}
    for table in sorted(set(inspector.get_table_names()) - {migrations.VERSION_TABLE}):
        columns = [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"))
            for c in inspector.get_columns(table)
        ]
        indexes = sorted(
            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(table)
        )
        uniques = sorted(
            (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
        )
        primary_key = inspector.get_pk_constraint(table)
        described[table] = {
            "columns": sorted(columns),
            "primary_key": (primary_key["name"], primary_key["constrained_columns"]),
            "indexes": indexes,
            "uniques": uniques,
        }
    return described


def empty_the_store(engine: sa.Engine) -> None:
    tables = sa.MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)


def migrate_to(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def set_revision(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def test_release_store_upgrades_with_every_row_kept(release_store: sa.Engine) -> None:
    before = stored_rows(release_store)

    create_tables(release_store)

    after = stored_rows(release_store)
    assert {table: len(rows) for table, rows in before.items()} == RELEASE_ROWS
    assert set(after) == set(before) | {"task_transitions", "threshold_moves"}
    assert after["task_transitions"] == after["threshold_moves"] == []
    for table, rows in before.items():
        kept = [{name: row[name] for name in rows[0]} for row in after[table]]
        assert kept == rows, table
    assert schema_revision(release_store) == migrations.head()


def test_release_store_keeps_its_task_live_on_its_published_version(
    release_store: sa.Engine, database_url: str
) -> None:
    create_tables(release_store)

    with Session(release_store) as session:
        task = get_task(session=session, name="tickets")
        published = session.get(StudentVersion, PUBLISHED)
        rejected = session.get(StudentVersion, REJECTED)
        head = session.get(StudentHead, PUBLISHED)
    assert task is not None
    assert (task.mode, task.cutover_percent, task.active_version_id) == ("live", 25.0, PUBLISHED)
    assert published is not None
    assert (published.state, published.kind) == ("published", "classifier")
    assert rejected is not None
    assert rejected.state == "rejected"
    assert head is not None
    assert head.data == b"PK\x03\x04\x00\x00\xff\xfe stillroom head"
    policy = load_policies(release_store, Settings(database_url=database_url))["tickets"]
    assert (policy.mode, policy.cutover_percent) == ("live", 25.0)
    assert policy.student is not None
    assert policy.student.version_id == PUBLISHED


def test_release_audit_teacher_calls_become_audit_exchanges(release_store: sa.Engine) -> None:
    create_tables(release_store)

    with Session(release_store) as session:
        origins = {exchange.id: exchange.origin for exchange in list_exchanges(session=session)}
        [first] = list_exchanges(session=session, limit=1)
    assert origins == {AUDIT_EXCHANGE: "audit"} | dict.fromkeys(CLIENT_EXCHANGES, "client")
    assert first.request["messages"][1]["content"] == 'Où est mon colis ? 📦 "urgent" \\ merci'


def test_release_store_upgraded_is_exactly_the_models(release_store: sa.Engine) -> None:
    create_tables(release_store)

    assert model_differences(release_store) == []


def test_empty_store_migrated_to_head_is_exactly_the_models(store: sa.Engine) -> None:
    create_tables(store)

    assert model_differences(store) == []
    assert schema_revision(store) == migrations.head()


def test_baseline_is_the_schema_the_release_made(release_store: sa.Engine) -> None:
    release = described_schema(release_store)
    empty_the_store(release_store)

    migrate_to(release_store, migrations.BASELINE)

    assert described_schema(release_store) == release


def test_create_tables_twice_on_a_release_store_is_harmless(release_store: sa.Engine) -> None:
    create_tables(release_store)
    upgraded = stored_rows(release_store)

    create_tables(release_store)

    assert stored_rows(release_store) == upgraded


def test_two_replicas_upgrading_a_release_store_at_once_migrate_it_once(
    release_store: sa.Engine, database_url: str
) -> None:
    before = stored_rows(release_store)
    engines = [create_store_engine(database_url) for _ in range(2)]
    try:
        assert race_create_tables(engines) == []
    finally:
        for engine in engines:
            engine.dispose()

    with release_store.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert versions == [(migrations.head(),)]
    assert len(stored_rows(release_store)["exchanges"]) == len(before["exchanges"])


def test_store_at_an_older_revision_is_upgraded(store: sa.Engine) -> None:
    migrate_to(store, migrations.BASELINE)
    with store.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO exchanges (id, task, created_at, served_by, status, http_status, "
                "stream, request, latency_ms) VALUES "
                "('x1', 't', CURRENT_TIMESTAMP, 'teacher', 'ok', 200, false, '{}', 1.5)"
            )
        )
    assert schema_status(store).pending == migrations.revisions()[1:]

    create_tables(store)

    assert schema_revision(store) == migrations.head()
    with Session(store) as session:
        [exchange] = list_exchanges(session=session)
    assert (exchange.id, exchange.origin, exchange.latency_ms) == ("x1", "client", 1.5)


def test_store_newer_than_the_build_stops_with_a_clear_error(store: sa.Engine) -> None:
    create_tables(store)
    set_revision(store, "0099_from_the_future")

    with pytest.raises(StoreSchemaError) as raised:
        create_tables(store)

    message = str(raised.value)
    assert "'0099_from_the_future'" in message
    assert repr(migrations.head()) in message
    assert "Upgrade stillroom" in message
    status = schema_status(store)
    assert (status.current, status.known, status.pending) == ("0099_from_the_future", False, ())


def test_unversioned_store_unlike_the_release_is_refused(store: sa.Engine) -> None:
    # A development build's create_all: today's tables, no recorded revision.
    SQLModel.metadata.create_all(store)

    with pytest.raises(StoreSchemaError, match=r"exchanges\.origin.*task_transitions"):
        create_tables(store)


def test_store_at_head_costs_one_query(store: sa.Engine) -> None:
    create_tables(store)
    statements: list[str] = []
    sa.event.listen(store, "before_cursor_execute", lambda *args: statements.append(args[2]))

    create_tables(store)

    assert [s for s in statements if not s.startswith("PRAGMA")] == [
        "SELECT version_num FROM alembic_version"
    ]


def test_schema_status_of_an_empty_store(store: sa.Engine) -> None:
    status = schema_status(store)

    assert (status.current, status.has_tables) == (None, False)
    assert status.pending == migrations.revisions()
    assert schema_revision(store) is None


def test_schema_status_of_a_release_store(release_store: sa.Engine) -> None:
    status = schema_status(release_store)

    assert (status.current, status.has_tables) == (None, True)
    assert status.pending == migrations.revisions()[1:]


def test_downgrade_to_the_baseline_gives_back_the_release_schema(
    release_store: sa.Engine,
) -> None:
    release = described_schema(release_store)
    create_tables(release_store)

    with release_store.begin() as connection:
        command.downgrade(alembic_config(connection), migrations.BASELINE)

    assert described_schema(release_store) == release


def test_revisions_are_numbered_files_in_one_line() -> None:
    with closing(sa.create_engine("sqlite://").connect()) as connection:
        script = ScriptDirectory.from_config(alembic_config(connection))
    oldest_first = list(reversed(list(script.walk_revisions())))
    assert [r.revision for r in oldest_first] == list(migrations.revisions())
    assert [r.down_revision for r in oldest_first] == [None, *migrations.revisions()[:-1]]
    for revision in oldest_first:
        assert Path(revision.path).stem == revision.revision
    assert script.get_heads() == [migrations.head()]
