"""Alembic's environment: runs the revisions on the connection passed in
``config.attributes["connection"]`` (see :func:`core.migrations.upgrade.alembic_config`),
inside the caller's transaction and under its schema lock. There is no offline (``--sql``)
mode and no ``alembic.ini``."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import core.tables  # noqa: F401  (registers the models on SQLModel.metadata, for autogenerate)


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or not isinstance(connection, Connection):
        raise RuntimeError("stillroom migrations run on a connection: see core.migrations")
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # SQLite alters a table by copying it; batch mode does that
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
