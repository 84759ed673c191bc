"""Exchanges say why they exist (``origin``); tasks keep their mode changes.

``exchanges.origin`` is client, audit or import. The release recorded an audit teacher
call as an ordinary teacher exchange, told apart only by the audit shadow result that
points to it, so those rows are backfilled as ``audit``; every other row was an app's
request. ``task_transitions`` is new.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_origin_transitions"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(
            sa.Column("origin", sa.String(length=16), nullable=False, server_default="client")
        )
    op.execute(
        "UPDATE exchanges SET origin = 'audit' WHERE id IN "
        "(SELECT exchange_id FROM shadow_results "
        "WHERE kind = 'audit' AND exchange_id IS NOT NULL)"
    )
    op.create_table(
        "task_transitions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("from_mode", sa.String(length=16), nullable=False),
        sa.Column("to_mode", sa.String(length=16), nullable=False),
        sa.Column("from_cutover_percent", sa.Float(), nullable=False),
        sa.Column("to_cutover_percent", sa.Float(), nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_task_transitions_task_created", "task_transitions", ["task", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_task_transitions_task_created", table_name="task_transitions")
    op.drop_table("task_transitions")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("origin")
