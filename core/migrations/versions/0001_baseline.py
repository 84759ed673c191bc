"""The schema of release 683dfd0, the last made without migrations.

Written out in full, not taken from the models: they keep changing, and this revision
must keep building the schema that release made (and stamped stores of it hold).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

# JSON documents: JSONB on Postgres, JSON text elsewhere (core.tables.JSONDocument then).
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "drift_reports",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("input_drift", sa.Float(), nullable=True),
        sa.Column("window_agreement", sa.Float(), nullable=True),
        sa.Column("scored_pairs", sa.Integer(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_drift_reports_task", "drift_reports", ["task"])

    op.create_table(
        "exchanges",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("served_by", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("request", JSON_DOCUMENT, nullable=False),
        sa.Column("response", JSON_DOCUMENT, nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("first_chunk_ms", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_exchanges_created_at", "exchanges", ["created_at"])
    op.create_index("ix_exchanges_task", "exchanges", ["task"])
    op.create_index("ix_exchanges_task_created", "exchanges", ["task", "created_at"])

    op.create_table(
        "shadow_results",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("exchange_id", sa.String(length=32), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=True),
        sa.Column("agrees", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("student_answer", sa.Text(), nullable=False),
        sa.Column("teacher_answer", sa.Text(), nullable=False),
        sa.Column("student_latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_shadow_results_task_created", "shadow_results", ["task", "created_at"])

    op.create_table(
        "student_heads",
        sa.Column("version_id", sa.String(length=32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("version_id"),
    )

    op.create_table(
        "student_versions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("base_model", sa.Text(), nullable=False),
        sa.Column("adapter_name", sa.String(length=128), nullable=False),
        sa.Column("adapter_path", sa.Text(), nullable=False),
        sa.Column("training_run_id", sa.String(length=32), nullable=True),
        sa.Column("metric", sa.String(length=16), nullable=True),
        sa.Column("agreement", sa.Float(), nullable=True),
        sa.Column("base_agreement", sa.Float(), nullable=True),
        sa.Column("confidence_threshold", sa.Float(), nullable=True),
        sa.Column("retained_share", sa.Float(), nullable=True),
        sa.Column("retained_agreement", sa.Float(), nullable=True),
        sa.Column("evaluation", JSON_DOCUMENT, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task", "number"),
    )
    op.create_index("ix_student_versions_task", "student_versions", ["task"])

    op.create_table(
        "tasks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("derived", sa.Boolean(), nullable=False),
        sa.Column("teacher_model", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("cutover_percent", sa.Float(), nullable=False),
        sa.Column("active_version_id", sa.String(length=32), nullable=True),
        sa.Column("target_agreement", sa.Float(), nullable=True),
        sa.Column("shadow_percent", sa.Float(), nullable=False),
        sa.Column("audit_percent", sa.Float(), nullable=False),
        sa.Column("confidence_threshold", sa.Float(), nullable=True),
        sa.Column("auto_ramp", sa.Boolean(), nullable=False),
        sa.Column("stage_started_at", TIMESTAMP, nullable=True),
        sa.Column("shape", sa.String(length=16), nullable=True),
        sa.Column("label_count", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )

    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("eta_seconds", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("curation", JSON_DOCUMENT, nullable=False),
        sa.Column("exchanges_seen", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_training_runs_task", "training_runs", ["task"])


def downgrade() -> None:
    # Below the baseline there is no schema, only the loss of every row: refuse.
    raise NotImplementedError("the baseline cannot be downgraded: it would drop every table")
