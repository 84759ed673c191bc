"""Bringing a store to the head with Alembic, on a connection that the caller holds in a
transaction under the schema lock (see :func:`core.store.create_tables`)."""

from __future__ import annotations

import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.tables  # noqa: F401  (registers the models on SQLModel.metadata)
from core.errors import StoreSchemaError
from core.migrations import BASELINE, VERSION_TABLE, SchemaStatus, newer_store_message, revisions

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, built here (there is no alembic.ini): the revisions of this
    package, run by its env.py on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    return config


def read_status(connection: Connection) -> SchemaStatus:
    """The revision the store records, and whether it holds stillroom's tables."""
    tables = set(sa.inspect(connection).get_table_names())
    recorded: list[str] = []
    if VERSION_TABLE in tables:
        recorded = list(
            connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars()
        )
    unknown = [revision for revision in recorded if revision not in revisions()]
    current = unknown[0] if unknown else max(recorded, default=None)
    return SchemaStatus(current=current, has_tables=bool(tables & set(SQLModel.metadata.tables)))


def upgrade_store(connection: Connection) -> tuple[str, ...]:
    """Bring the store to the head; return the revisions applied, oldest first.

    An empty store is built from nothing; one made by the release before migrations (its
    tables, no recorded revision) is stamped with the baseline first. Raises
    :class:`StoreSchemaError` for a revision this build does not know, or for tables that
    are not the baseline's.
    """
    status = read_status(connection)
    if not status.known:
        raise StoreSchemaError(newer_store_message(str(status.current)))
    config = alembic_config(connection)
    if status.current is None and status.has_tables:
        _check_release_store(connection)
        command.stamp(config, BASELINE)
    if status.pending:
        command.upgrade(config, "head")
    return status.pending


def _check_release_store(connection: Connection) -> None:
    """Stamping asserts that the store holds the baseline's tables: check that it does."""
    inspector = sa.inspect(connection)
    present = set(inspector.get_table_names())
    baseline = _baseline_tables()
    problems: list[str] = []
    for table, columns in sorted(baseline.items()):
        if table not in present:
            problems.append(f"no table {table}")
            continue
        found = {column["name"] for column in inspector.get_columns(table)}
        problems += [f"no column {table}.{name}" for name in sorted(columns - found)]
        problems += [f"an unknown column {table}.{name}" for name in sorted(found - columns)]
    later = set(SQLModel.metadata.tables) - set(baseline)
    problems += [f"a table {table} of a later revision" for table in sorted(later & present)]
    if problems:
        raise StoreSchemaError(
            "the store holds stillroom's tables but records no schema revision, and they "
            f"are not those of release 683dfd0, the last made without migrations "
            f"({'; '.join(problems)}): it was made by a development build. Back it up and "
            "start from an empty store, or stamp it with the revision its tables match."
        )


@functools.cache
def _baseline_tables() -> dict[str, frozenset[str]]:
    """The baseline's tables and their columns, read from a scratch store built by it."""
    scratch = sa.create_engine("sqlite://")
    try:
        with scratch.begin() as connection:
            command.upgrade(alembic_config(connection), BASELINE)
            inspector = sa.inspect(connection)
            return {
                table: frozenset(column["name"] for column in inspector.get_columns(table))
                for table in inspector.get_table_names()
                if table != VERSION_TABLE
            }
    finally:
        scratch.dispose()
