"""The store: engine creation and the functions that read and write its tables.

Functions take keyword-only arguments and a ``Session`` or ``Engine``; they are
synchronous (SQLAlchemy's), so async callers run them in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, col, func, select

from core import migrations
from core.errors import ConfigurationError, NotFoundError, StoreSchemaError
from core.tables import Exchange, ExchangeCreate, Task, TrainingRun

log = logging.getLogger("stillroom.store")

# Taken while migrating so that replicas starting together do not race on DDL.
_SCHEMA_LOCK_ID = 0x5714_1200


def normalise_database_url(url: str) -> str:
    """Accept the URLs users paste (``postgres://``, ``postgresql://``) and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def create_store_engine(url: str, *, connect_timeout: float = 5.0) -> Engine:
    """An engine for SQLite (WAL, created if missing) or Postgres (psycopg 3)."""
    url = normalise_database_url(url)
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, connect_timeout)
    if parsed.get_backend_name() == "postgresql":
        return sa.create_engine(
            url,
            json_serializer=_json_text,
            json_deserializer=orjson.loads,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"connect_timeout": max(1, round(connect_timeout))},
        )
    raise ConfigurationError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://"
    )


def _json_text(value: Any) -> str:
    # orjson: several times faster than the standard library on exchange documents.
    return orjson.dumps(value).decode()


def _sqlite_engine(url: str, database: str | None, timeout: float) -> Engine:
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.close()

    return engine


def create_tables(engine: Engine) -> None:
    """Bring the store to this build's schema, keeping every row: build it in an empty
    store, upgrade one made by an earlier release (see :mod:`core.migrations`).

    Safe to call from several processes at once: the first migrates under a lock, the
    others then find nothing to do. A store already at the head costs one query. Raises
    :class:`StoreSchemaError` for a store this build cannot use (upgraded by a newer
    stillroom), and ``OperationalError`` when the store cannot be reached.
    """
    if schema_revision(engine) == migrations.head():
        return
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SCHEMA_LOCK_ID}
            )
        elif engine.dialect.name == "sqlite":
            # The driver opens no transaction for DDL; take the write lock explicitly.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        # Alembic is loaded only when there is work: most starts find the store at head.
        from core.migrations.upgrade import upgrade_store

        applied = upgrade_store(connection)
    if applied:
        log.info("store schema upgraded to %s (applied %s)", applied[-1], ", ".join(applied))


def schema_revision(engine: Engine) -> str | None:
    """The schema revision the store records; None when it records none (an empty store,
    or one made by a release before migrations)."""
    try:
        with engine.connect() as connection:
            return connection.execute(
                sa.text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")
            ).scalar()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        # No version table, or no store: one more question tells which (and raises again).
        with engine.connect() as connection:
            if sa.inspect(connection).has_table(migrations.VERSION_TABLE):
                raise
        return None


def schema_status(engine: Engine) -> migrations.SchemaStatus:
    """Where the store's schema stands against this build's (``stillroom db current``)."""
    from core.migrations.upgrade import read_status

    with engine.connect() as connection:
        return read_status(connection)


# SQLite reports a missing table or column as an OperationalError, like an outage.
_SQLITE_SCHEMA_FAULTS = ("no such table", "no such column", "has no column named")


def schema_fault(exc: BaseException) -> str | None:
    """Why ``exc`` says that the store's schema does not fit this build (a missing table or
    column, a store of another revision, a statement the store cannot run), or None when
    it says something else: that the store is unreachable, or refuses a row as data."""
    if isinstance(exc, StoreSchemaError):
        return exc.message
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    lines = str(exc.orig).strip().splitlines()
    cause = lines[0] if lines else type(exc.orig).__name__
    if isinstance(exc, sa.exc.ProgrammingError):
        return cause
    if isinstance(exc, sa.exc.OperationalError) and any(
        fault in cause for fault in _SQLITE_SCHEMA_FAULTS
    ):
        return cause
    return None


def ping(engine: Engine) -> None:
    """Raise unless the store answers a query."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


def _insert(engine: Engine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def insert_exchanges(*, engine: Engine, exchanges: Sequence[ExchangeCreate]) -> None:
    """Write exchanges, and the tasks they name, in one transaction.

    Idempotent: an exchange already stored (same id) is skipped, so a batch retried after
    an unclear failure never lands twice.
    """
    if not exchanges:
        return
    tasks: dict[str, dict[str, Any]] = {}
    for exchange in exchanges:
        tasks.setdefault(
            exchange.task,
            {
                "name": exchange.task,
                "created_at": exchange.created_at,
                "derived": exchange.task_derived,
                "tenant": exchange.tenant,
                "teacher_model": exchange.model,
                "mode": "off",
                "cutover_percent": 0.0,
            },
        )
    # executemany, not one multi-row VALUES: the statement compiles once, not per batch.
    with engine.begin() as connection:
        connection.execute(_insert(engine, Task).on_conflict_do_nothing(), list(tasks.values()))
        connection.execute(
            _insert(engine, Exchange).on_conflict_do_nothing(),
            [exchange.row() for exchange in exchanges],
        )


def get_task(*, session: Session, name: str) -> Task | None:
    return session.get(Task, name)


def list_tasks(*, session: Session) -> Sequence[Task]:
    return session.exec(select(Task).order_by(col(Task.name))).all()


def list_exchanges(
    *, session: Session, task: str | None = None, limit: int | None = None
) -> Sequence[Exchange]:
    """Exchanges, oldest first, optionally of one task."""
    query = select(Exchange).order_by(col(Exchange.created_at), col(Exchange.id))
    if task is not None:
        query = query.where(Exchange.task == task)
    if limit is not None:
        query = query.limit(limit)
    return session.exec(query).all()


def count_exchanges(
    *, session: Session, task: str | None = None, statuses: Iterable[str] | None = None
) -> int:
    query = select(func.count()).select_from(Exchange)
    if task is not None:
        query = query.where(Exchange.task == task)
    if statuses is not None:
        query = query.where(col(Exchange.status).in_(list(statuses)))
    return session.exec(query).one()


def queue_training(*, engine: Engine, task: str, trigger: str = "manual") -> TrainingRun:
    """A queued run for ``task``, or the one already queued. A run in progress does not
    stand for one asked for now: it curated its pairs when it started, so a follow-up run
    is queued behind it, to train on everything stored by the time it starts."""
    with Session(engine) as session, session.begin():
        if engine.dialect.name == "postgresql":
            # Two distillers checking at once must not both queue the task.
            session.connection().execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _queue_lock_key(task)}
            )
        if session.get(Task, task) is None:
            raise NotFoundError(f"unknown task {task!r}", param="task")
        pending = session.exec(
            select(TrainingRun).where(TrainingRun.task == task, TrainingRun.state == "queued")
        ).first()
        run = pending or TrainingRun(id=uuid.uuid4().hex, task=task, trigger=trigger)
        session.add(run)
        session.flush()
        session.expunge(run)
    return run


def _queue_lock_key(task: str) -> int:
    digest = hashlib.sha256(b"queue:" + task.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
