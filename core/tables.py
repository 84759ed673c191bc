"""SQLModel tables of the store, one family per entity (``XBase`` / ``X`` / ``XCreate``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

# JSON documents: JSONB on Postgres (indexable, compact), JSON text elsewhere.
JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

TASK_NAME_MAX = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class Task(SQLModel, table=True):
    """One narrow job, named by its client or derived from its prompt template."""

    __tablename__ = "tasks"

    name: str = Field(primary_key=True, max_length=TASK_NAME_MAX)
    created_at: datetime = Field(
        default_factory=utcnow,
        sa_type=sa.DateTime(timezone=True),
    )
    derived: bool = Field(default=False, description="named by hash, not by the client")
    teacher_model: str | None = Field(default=None, sa_type=sa.Text)
    mode: str = Field(default="off", max_length=16)
    cutover_percent: float = Field(default=0.0)


class ExchangeBase(SQLModel):
    """One request and its answer, with who served it and what it cost."""

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(index=True, max_length=TASK_NAME_MAX)
    created_at: datetime = Field(
        default_factory=utcnow,
        index=True,
        sa_type=sa.DateTime(timezone=True),
    )
    served_by: str = Field(max_length=16, description="teacher, student or fallback")
    status: str = Field(
        max_length=16, description="ok, error (an error answer) or aborted (cut short)"
    )
    http_status: int
    model: str | None = Field(default=None, sa_type=sa.Text)
    stream: bool = False
    request: dict[str, Any] = Field(sa_type=JSONDocument)
    response: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSONDocument,
    )
    finish_reason: str | None = Field(default=None, sa_type=sa.Text)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_usd: float | None = None
    latency_ms: float
    first_chunk_ms: float | None = None


class Exchange(ExchangeBase, table=True):
    __tablename__ = "exchanges"
    __table_args__ = (sa.Index("ix_exchanges_task_created", "task", "created_at"),)


class ExchangeCreate(ExchangeBase):
    """An exchange on its way to the store (also the line format of spill files)."""

    task_derived: bool = Field(default=False, description="the task was named by hash")

    def row(self) -> dict[str, Any]:
        """The column values of the ``exchanges`` row."""
        return self.model_dump(exclude={"task_derived"})
