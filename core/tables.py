"""SQLModel tables of the store, one family per entity (``XBase`` / ``X`` / ``XCreate``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import Field, SQLModel

# JSON documents: JSONB on Postgres (indexable, compact), JSON text elsewhere.
JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

TASK_NAME_MAX = 64  # a task's name as the client gives it (X-Stillroom-Task)
TENANT_MAX = 32
# A task's key in the store: its name, and "@tenant" for any tenant but the default one.
TASK_KEY_MAX = 128  # at least TASK_NAME_MAX + 1 + TENANT_MAX
DEFAULT_TENANT = "default"

# The API a request came on: Chat Completions, the Responses API or Anthropic's Messages.
Dialect = Literal["chat", "responses", "messages"]
DIALECTS: tuple[Dialect, ...] = ("chat", "responses", "messages")

# A task's mode: teacher only, the student answering on the side, or serving a cutover.
Mode = Literal["off", "shadow", "live"]
MODES: tuple[Mode, ...] = ("off", "shadow", "live")

# What changed a task's mode or cutover (see ``core.transitions``).
TransitionCause = Literal["admin", "auto_ramp", "drift", "publish", "rollback"]
TRANSITION_CAUSES: tuple[TransitionCause, ...] = (
    "admin",
    "auto_ramp",
    "drift",
    "publish",
    "rollback",
)

VersionState = Literal["candidate", "published", "retired", "rejected"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Task(SQLModel, table=True):
    """One narrow job, named by its client or derived from its prompt template."""

    __tablename__ = "tasks"

    name: str = Field(primary_key=True, max_length=TASK_KEY_MAX)
    created_at: datetime = Field(
        default_factory=utcnow,
        sa_type=sa.DateTime(timezone=True),
    )
    derived: bool = Field(default=False, description="named by hash, not by the client")
    teacher_model: str | None = Field(default=None, sa_type=sa.Text)
    mode: str = Field(
        default="off",
        max_length=16,
        description="off, shadow or live (a Mode); changed only through core.transitions",
    )
    cutover_percent: float = Field(default=0.0)
    active_version_id: str | None = Field(default=None, max_length=32)
    target_agreement: float | None = Field(
        default=None, description="overrides the setting for this task"
    )
    shadow_percent: float = Field(
        default=100.0, description="share of a shadow task's requests also sent to the student"
    )
    audit_percent: float = Field(
        default=5.0, description="share of live student answers also sent to the teacher"
    )
    confidence_threshold: float | None = Field(
        default=None, description="overrides the live version's calibrated threshold"
    )
    auto_ramp: bool = Field(
        default=False, description="shadow, then live 10, 25, 50, 100% as agreement holds"
    )
    stage_started_at: datetime | None = Field(
        default=None,
        sa_type=sa.DateTime(timezone=True),
        description="when the task entered its current mode and cutover",
    )
    shape: str | None = Field(
        default=None,
        max_length=16,
        description="label, json or text: how its teacher answers look (latest curation)",
    )
    label_count: int | None = Field(
        default=None, description="distinct teacher answers of a label-like task"
    )
    field_kinds: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSONDocument,
        description="a json task's fields by path: span, label, constant or unsupported "
        "(latest curation)",
    )
    controlled_threshold: float | None = Field(
        default=None,
        description="the threshold controller's current threshold for the version in "
        "controlled_version_id (see router.threshold_control)",
    )
    controlled_version_id: str | None = Field(
        default=None, max_length=32, description="the version controlled_threshold is for"
    )
    tenant: str = Field(
        default=DEFAULT_TENANT,
        index=True,
        max_length=TENANT_MAX,
        sa_column_kwargs={"server_default": DEFAULT_TENANT},
        description="whose task it is: every tenant's tasks, exchanges and students are apart",
    )
    retention_days: float | None = Field(
        default=None, description="overrides STILLROOM_RETENTION_DAYS for this task's exchanges"
    )
    cache_seconds: float | None = Field(
        default=None, description="overrides STILLROOM_CACHE_SECONDS for this task"
    )


class ExchangeBase(SQLModel):
    """One request and its answer, with who served it and what it cost."""

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(index=True, max_length=TASK_KEY_MAX)
    created_at: datetime = Field(
        default_factory=utcnow,
        index=True,
        sa_type=sa.DateTime(timezone=True),
    )
    served_by: str = Field(max_length=16, description="teacher, student or fallback")
    origin: str = Field(
        default="client",
        max_length=16,
        sa_column_kwargs={"server_default": "client"},
        description="client (an app's request), audit (stillroom asking the teacher "
        "again) or import (loaded from a file); only client exchanges are requests",
    )
    status: str = Field(
        max_length=16, description="ok, error (an error answer) or aborted (cut short)"
    )
    http_status: int
    dialect: str = Field(
        default="chat",
        max_length=16,
        sa_column_kwargs={"server_default": "chat"},
        description="chat, responses or messages (a Dialect): the API the request came on",
    )
    client_request: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSONDocument,
        description="the request as the client sent it, when not on Chat Completions "
        "(request then holds its Chat Completions view)",
    )
    client_response: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSONDocument,
        description="the answer as the client received it, when not on Chat Completions "
        "(response then holds its chat.completion view)",
    )
    response_id: str | None = Field(
        default=None,
        index=True,
        max_length=64,
        description="the id the client saw (resp_..., msg_...) when it is not the row's",
    )
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
    tenant: str = Field(
        default=DEFAULT_TENANT,
        max_length=TENANT_MAX,
        sa_column_kwargs={"server_default": DEFAULT_TENANT},
        description="the tenant of the exchange's task",
    )
    client_key_hash: str | None = Field(
        default=None,
        max_length=64,
        description="sha256 of the API key the client presented (never the key itself)",
    )
    end_user: str | None = Field(
        default=None,
        index=True,
        max_length=256,
        description="whose request it was: its `user` field (or metadata.user_id), else "
        "its route key; what DELETE /admin/exchanges?user= finds",
    )
    request_hash: str | None = Field(
        default=None,
        max_length=64,
        description="sha256 of the canonical request (the cache's key, import's dedup key)",
    )
    version_id: str | None = Field(
        default=None, max_length=32, description="the student version that answered, if one did"
    )
    feedback: str | None = Field(
        default=None, max_length=16, description="good or bad, as the app said"
    )
    corrected_response: dict[str, Any] | None = Field(
        default=None,
        sa_type=JSONDocument,
        description="the answer the app says was right (a chat.completion): trains in place "
        "of response",
    )
    feedback_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    suspect: str | None = Field(
        default=None,
        max_length=16,
        description="retry or reask: the client asked again, so the answer is left out of training",
    )


class Exchange(ExchangeBase, table=True):
    __tablename__ = "exchanges"
    __table_args__ = (
        sa.Index("ix_exchanges_task_created", "task", "created_at"),
        # The cache's, the retry detector's and the import's lookups: newest first.
        sa.Index("ix_exchanges_task_request_hash", "task", "request_hash", "created_at"),
    )


class ExchangeCreate(ExchangeBase):
    """An exchange on its way to the store (also the line format of spill files)."""

    task_derived: bool = Field(default=False, description="the task was named by hash")

    def row(self) -> dict[str, Any]:
        """The column values of the ``exchanges`` row (no copy of the documents)."""
        return {name: getattr(self, name) for name in ExchangeBase.model_fields}


class StudentVersion(SQLModel, table=True):
    """One trained student for one task, with its evaluation.

    States: ``candidate`` → ``published`` → ``retired``, or ``rejected`` (with why).
    """

    __tablename__ = "student_versions"
    __table_args__ = (sa.UniqueConstraint("task", "number"),)

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(index=True, max_length=TASK_KEY_MAX)
    number: int = Field(description="1, 2, ... per task")
    kind: str = Field(default="lora", max_length=16, description="lora or classifier")
    state: str = Field(default="candidate", max_length=16)
    reason: str | None = Field(default=None, sa_type=sa.Text, description="why rejected")
    base_model: str = Field(sa_type=sa.Text)
    adapter_name: str = Field(max_length=128, description="name in the student backend")
    adapter_path: str = Field(sa_type=sa.Text)
    training_run_id: str | None = Field(default=None, max_length=32)
    metric: str | None = Field(default=None, max_length=16, description="label, json or text")
    agreement: float | None = Field(default=None, description="held-out, whole split")
    base_agreement: float | None = Field(default=None, description="base model, no adapter")
    confidence_threshold: float | None = Field(
        default=None,
        description="log-probability at or above which the student answers: the mean per "
        "answer token (lora), or of the label (classifier)",
    )
    retained_share: float | None = Field(
        default=None, description="held-out share at or above the threshold"
    )
    retained_agreement: float | None = Field(
        default=None, description="agreement on that retained share"
    )
    evaluation: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=JSONDocument,
        description="a core.evaluation.VersionEvaluation as JSON: read it with read_evaluation",
    )
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    published_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class StudentHead(SQLModel, table=True):
    """The trained head of a ``classifier`` student version (see ``core.classifier``), in
    the store so that every proxy can answer with it."""

    __tablename__ = "student_heads"

    version_id: str = Field(primary_key=True, max_length=32)
    data: bytes = Field(sa_type=sa.LargeBinary, description="the head as .npz bytes")
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class TrainingRun(SQLModel, table=True):
    """One request to train a task, from queued to its outcome, with live progress."""

    __tablename__ = "training_runs"

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(index=True, max_length=TASK_KEY_MAX)
    state: str = Field(
        default="queued", max_length=16, description="queued, running, succeeded, failed"
    )
    trigger: str = Field(
        default="manual", max_length=16, description="manual, schedule, drift or stale"
    )
    phase: str | None = Field(default=None, max_length=32)
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    eta_seconds: float | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
    curation: dict[str, Any] = Field(default_factory=dict, sa_type=JSONDocument)
    exchanges_seen: int = Field(default=0, description="curated pairs available at start")
    version_id: str | None = Field(default=None, max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
    started_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    updated_at: datetime | None = Field(
        default=None, sa_type=sa.DateTime(timezone=True), description="last heartbeat"
    )
    finished_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))


class ShadowResult(SQLModel, table=True):
    """One student answer scored against the teacher's: ``shadow`` (the teacher served)
    or ``audit`` (the student served, the teacher was asked afterwards)."""

    __tablename__ = "shadow_results"
    __table_args__ = (sa.Index("ix_shadow_results_task_created", "task", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(max_length=TASK_KEY_MAX)
    version_id: str = Field(max_length=32)
    kind: str = Field(max_length=16, description="shadow or audit")
    exchange_id: str | None = Field(default=None, max_length=32)
    input_text: str | None = Field(
        default=None, sa_type=sa.Text, description="the request's prompt key (non-system turns)"
    )
    agrees: bool
    score: float
    confidence: float | None = None
    student_answer: str = Field(sa_type=sa.Text)
    teacher_answer: str = Field(sa_type=sa.Text)
    student_latency_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class DriftReport(SQLModel, table=True):
    """One drift check of a task's live version, and what it led to."""

    __tablename__ = "drift_reports"

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(index=True, max_length=TASK_KEY_MAX)
    version_id: str = Field(max_length=32)
    input_drift: float | None = Field(
        default=None,
        description="recent inputs' distance to the training set, over the "
        "held-out inputs' (1.0: no drift)",
    )
    window_agreement: float | None = Field(
        default=None, description="agreement of the latest shadow and audit pairs"
    )
    scored_pairs: int = 0
    drifted: bool = False
    action: str = Field(default="none", max_length=32, description="none, stepped_down")
    reason: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


class TaskTransition(SQLModel, table=True):
    """One change of a task's mode or cutover, with what changed it and why."""

    __tablename__ = "task_transitions"
    __table_args__ = (sa.Index("ix_task_transitions_task_created", "task", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(max_length=TASK_KEY_MAX)
    from_mode: str = Field(max_length=16)
    to_mode: str = Field(max_length=16)
    from_cutover_percent: float
    to_cutover_percent: float
    cause: str = Field(max_length=16, description="admin, auto_ramp, drift, publish or rollback")
    reason: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))


# Which way the threshold controller moved a task's threshold.
ThresholdDirection = Literal["loosen", "tighten"]
THRESHOLD_DIRECTIONS: tuple[ThresholdDirection, ...] = ("loosen", "tighten")


class ThresholdMove(SQLModel, table=True):
    """One move of a task's confidence threshold by the controller, with its evidence:
    the scored answers of the live version it would serve, and the bound on their
    agreement."""

    __tablename__ = "threshold_moves"
    __table_args__ = (sa.Index("ix_threshold_moves_task_created", "task", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    task: str = Field(max_length=TASK_KEY_MAX)
    version_id: str = Field(max_length=32)
    direction: str = Field(max_length=16, description="loosen or tighten")
    from_threshold: float
    to_threshold: float
    pairs: int = Field(description="scored answers above the old threshold (audits, shadow)")
    agreed: int = Field(description="of which agreed with the teacher")
    lower_bound: float = Field(description="one-sided 95% Clopper-Pearson bound on agreement")
    target: float
    reason: str = Field(sa_type=sa.Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True))
