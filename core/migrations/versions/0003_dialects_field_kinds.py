"""Exchanges of every API dialect; tasks keep the kinds of their answers' fields.

An exchange's ``request`` and ``response`` stay the Chat Completions documents that
curation, training, evaluation, export and routing read. For a request that came on
another API (``dialect`` ``responses`` or ``messages``) they hold its canonical view in
that shape, and ``client_request`` / ``client_response`` keep the documents as the
client sent and received them. ``response_id`` is the id the client saw (``resp_...``,
``msg_...``), so that a later ``previous_response_id`` or ``GET /v1/responses/{id}``
finds it. Every existing row is a Chat Completions exchange.

``tasks.field_kinds`` is the latest curation's reading of a JSON task's fields (span,
label, constant or unsupported, per field path).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_dialects_field_kinds"
down_revision = "0002_origin_transitions"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("exchanges") as batch:
        batch.add_column(
            sa.Column("dialect", sa.String(length=16), nullable=False, server_default="chat")
        )
        batch.add_column(sa.Column("client_request", JSON_DOCUMENT, nullable=True))
        batch.add_column(sa.Column("client_response", JSON_DOCUMENT, nullable=True))
        batch.add_column(sa.Column("response_id", sa.String(length=64), nullable=True))
    op.create_index("ix_exchanges_response_id", "exchanges", ["response_id"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("field_kinds", JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("field_kinds")
    op.drop_index("ix_exchanges_response_id", table_name="exchanges")
    with op.batch_alter_table("exchanges") as batch:
        batch.drop_column("response_id")
        batch.drop_column("client_response")
        batch.drop_column("client_request")
        batch.drop_column("dialect")
