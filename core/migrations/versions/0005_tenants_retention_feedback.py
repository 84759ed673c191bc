"""Tenants, retention, feedback, import and the cache.

A task now belongs to a tenant (``tasks.tenant``; every existing task to ``default``). A
task's key in the store is its name for the default tenant and ``name@tenant`` for any
other, so every table keyed by task (exchanges, versions, runs, audits, drift, moves) is
scoped by tenant through it; ``task`` columns widen to 128 characters to hold the suffix.
Tasks may override retention (``retention_days``) and the cache (``cache_seconds``).

Exchanges gain: ``tenant``; ``client_key_hash`` (sha256 of the key the client presented,
never the key); ``end_user`` (the request's ``user``, else its route key: what deletion on
request finds); ``request_hash`` (the canonical request's sha256: the cache's key and the
import's dedup key, indexed with the task and the time); ``version_id`` (the student version that
answered, if one did); the app's ``feedback`` (good or bad), its
``corrected_response`` and ``feedback_at``; ``suspect`` (retry or reask: the client asked
again, so the answer does not train). Existing rows keep every value; the new columns are
null, or ``default`` for the tenant.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_tenants_retention_feedback"
down_revision = "0004_threshold_control"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# Every table's task column (tasks.name is the key itself).
TASK_COLUMNS = (
    ("tasks", "name"),
    ("exchanges", "task"),
    ("student_versions", "task"),
    ("training_runs", "task"),
    ("shadow_results", "task"),
    ("drift_reports", "task"),
    ("task_transitions", "task"),
    ("threshold_moves", "task"),
)


def _resize_task_columns(old: int, new: int) -> None:
    for table, column in TASK_COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                column,
                existing_type=sa.String(length=old),
                type_=sa.String(length=new),
                existing_nullable=False,
            )


def upgrade() -> None:
    _resize_task_columns(64, 128)
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(length=32), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("retention_days", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cache_seconds", sa.Float(), nullable=True))
    op.create_index("ix_tasks_tenant", "tasks", ["tenant"])
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(length=32), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("client_key_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("end_user", sa.String(length=256), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("version_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("feedback", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("corrected_response", JSON_DOCUMENT, nullable=True))
        batch.add_column(sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("suspect", sa.String(length=16), nullable=True))
    op.create_index("ix_exchanges_end_user", "exchanges", ["end_user"])
    op.create_index(
        "ix_exchanges_task_request_hash", "exchanges", ["task", "request_hash", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_exchanges_task_request_hash", table_name="exchanges")
    op.drop_index("ix_exchanges_end_user", table_name="exchanges")
    with op.batch_alter_table("exchanges") as batch:
        for column in (
            "suspect",
            "feedback_at",
            "corrected_response",
            "feedback",
            "version_id",
            "request_hash",
            "end_user",
            "client_key_hash",
            "tenant",
        ):
            batch.drop_column(column)
    op.drop_index("ix_tasks_tenant", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("cache_seconds")
        batch.drop_column("retention_days")
        batch.drop_column("tenant")
    _resize_task_columns(128, 64)
