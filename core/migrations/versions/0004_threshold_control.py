"""The threshold controller: a task's controlled confidence threshold, and its moves.

``tasks.controlled_threshold`` is the threshold the controller set for the version named
by ``tasks.controlled_version_id`` (routing ignores it for any other version; an admin's
``confidence_threshold`` wins over it). ``threshold_moves`` keeps every move with its
evidence: scored answers, agreements, the lower bound, the old and new threshold, why.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_threshold_control"
down_revision = "0003_dialects_field_kinds"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("controlled_threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("controlled_version_id", sa.String(length=32), nullable=True))
    op.create_table(
        "threshold_moves",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("direction", sa.String(length=16), nullable=False),
        sa.Column("from_threshold", sa.Float(), nullable=False),
        sa.Column("to_threshold", sa.Float(), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("agreed", sa.Integer(), nullable=False),
        sa.Column("lower_bound", sa.Float(), nullable=False),
        sa.Column("target", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_threshold_moves_task_created", "threshold_moves", ["task", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_threshold_moves_task_created", table_name="threshold_moves")
    op.drop_table("threshold_moves")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("controlled_version_id")
        batch.drop_column("controlled_threshold")
