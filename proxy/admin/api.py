"""The admin API (``/admin/*``): tasks, training, versions, publishing a chosen version,
rollback, export.

Bearer ``STILLROOM_ADMIN_TOKEN``; without one, only loopback clients of a loopback-bound
server are served.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from core.store import list_exchanges, queue_training
from core.tables import Mode, Task
from core.transitions import change_mode, lock_task
from distiller import registry
from distiller.curation import CurationConfig, curate
from distiller.export import fine_tuning_record
from proxy.admin.reports import (
    feedback_counts,
    task_summary,
    task_transitions,
    threshold_moves,
    version_public,
)
from proxy.admin.task_lookup import TaskKeyDep, TenantQuery, resolve_task, tasks_of
from proxy.gateway.deps import RuntimeDep
from proxy.gateway.runtime import Runtime

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def require_admin(request: Request, runtime: RuntimeDep) -> None:
    token = runtime.settings.admin_token
    if token is None:
        client = request.client.host if request.client else ""
        if runtime.settings.is_loopback and client in _LOOPBACK:
            return
        raise PermissionDeniedError(
            "the admin API needs STILLROOM_ADMIN_TOKEN when the server is not bound to loopback"
        )
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), token.get_secret_value().encode()
    ):
        raise AuthenticationError("missing or wrong admin token", code="invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def _session(runtime: RuntimeDep) -> Iterator[Session]:
    with Session(runtime.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _task(session: Session, name: str, tenant: str | None = None) -> Task:
    return resolve_task(session, name, tenant)


@router.get("/tasks")
def get_tasks(
    session: SessionDep, runtime: RuntimeDep, tenant: TenantQuery = None
) -> dict[str, Any]:
    """Every task, or one tenant's (``?tenant=``)."""
    tasks = tasks_of(session, tenant)
    return {"object": "list", "data": [task_summary(session, t, runtime.settings) for t in tasks]}


@router.get("/tasks/{task}")
def get_task(task: TaskKeyDep, session: SessionDep, runtime: RuntimeDep) -> dict[str, Any]:
    """The task's summary, its latest changes of mode and cutover and the controller's
    latest moves of its threshold (each newest first)."""
    row = _task(session, task)
    return {
        **task_summary(session, row, runtime.settings),
        "transitions": task_transitions(session, row.name),
        "threshold_moves": threshold_moves(session, row.name),
        "feedback": feedback_counts(session, row.name),
    }


class TaskUpdate(BaseModel):
    """What ``PATCH /admin/tasks/{task}`` may change; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode | None = None
    cutover_percent: float | None = Field(default=None, ge=0, le=100)
    shadow_percent: float | None = Field(default=None, ge=0, le=100)
    audit_percent: float | None = Field(default=None, ge=0, le=100)
    confidence_threshold: float | None = Field(default=None, le=0)
    target_agreement: float | None = Field(default=None, gt=0, le=1)
    auto_ramp: bool | None = None
    cache_seconds: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="the task's cache window in seconds; 0: off; null: the setting's",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="days the task's exchanges are kept; null: STILLROOM_RETENTION_DAYS's",
    )
    reason: str | None = Field(
        default=None, max_length=500, description="why mode or cutover changes, kept with it"
    )


@router.patch("/tasks/{task}")
def patch_task(task: TaskKeyDep, update: TaskUpdate, runtime: RuntimeDep) -> dict[str, Any]:
    """Change a task's mode, cutover and thresholds, all or nothing."""
    changes = update.model_dump(exclude_unset=True, exclude={"mode", "cutover_percent", "reason"})
    with Session(runtime.engine) as session, session.begin():
        row = lock_task(session=session, name=task)
        if row is None:
            raise NotFoundError(f"unknown task {task!r}", param="task")
        if update.mode in ("shadow", "live") and row.active_version_id is None:
            raise InvalidRequestError(
                f"task {task!r} has no published student version; train one first",
                param="mode",
            )
        for name, value in changes.items():
            setattr(row, name, value)
        change_mode(
            session=session,
            task=row,
            cause="admin",
            reason=update.reason or "set through the admin API",
            mode=update.mode,
            cutover_percent=update.cutover_percent,
        )
        session.flush()
        return task_summary(session, row, runtime.settings)


@router.post("/tasks/{task}/train", status_code=202)
def post_train(task: TaskKeyDep, runtime: RuntimeDep) -> dict[str, Any]:
    run = queue_training(engine=runtime.engine, task=task)
    return run.model_dump(mode="json")


@router.get("/tasks/{task}/runs")
def get_runs(task: TaskKeyDep, session: SessionDep) -> dict[str, Any]:
    runs = registry.list_runs(session=session, task=task)
    return {"object": "list", "data": [r.model_dump(mode="json") for r in runs]}


@router.get("/tasks/{task}/runs/{run_id}")
def get_run(task: TaskKeyDep, run_id: str, session: SessionDep) -> dict[str, Any]:
    return registry.get_run(session=session, task=task, run_id=run_id).model_dump(mode="json")


@router.get("/tasks/{task}/versions")
def get_versions(task: TaskKeyDep, session: SessionDep) -> dict[str, Any]:
    versions = registry.list_versions(session=session, task=task)
    return {"object": "list", "data": [version_public(v) for v in versions]}


@router.post("/tasks/{task}/versions/{version}/publish")
async def post_publish(task: TaskKeyDep, version: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Publish a version (``3``, ``v3`` or its id) the gate or the tournament passed over."""
    published = await registry.publish_chosen(
        engine=runtime.engine, backend=runtime.student_backend, task=task, version=version
    )
    return version_public(published)


@router.post("/tasks/{task}/rollback")
async def post_rollback(task: TaskKeyDep, runtime: RuntimeDep) -> dict[str, Any]:
    version = await registry.rollback(
        engine=runtime.engine, backend=runtime.student_backend, task=task
    )
    return version_public(version)


@router.get("/tasks/{task}/export")
def get_export(task: TaskKeyDep, runtime: RuntimeDep, session: SessionDep) -> StreamingResponse:
    """The task's curated pairs as OpenAI fine-tuning JSONL (one chat per line; a pair the
    teacher answered with tool calls as a tool fine-tuning record)."""
    exchanges = list(list_exchanges(session=session, task=task))
    curated = curate(exchanges, _curation_config(runtime), embed=None)
    requests = {exchange.id: exchange.request for exchange in exchanges}

    def lines() -> Iterator[bytes]:
        for example in [*curated.train, *curated.heldout]:
            record = fine_tuning_record(example, requests[example.exchange_id])
            yield orjson.dumps(record) + b"\n"

    return StreamingResponse(
        lines(),
        media_type="application/jsonl",
        headers={"content-disposition": f'attachment; filename="{task}.jsonl"'},
    )


def _curation_config(runtime: Runtime) -> CurationConfig:
    settings = runtime.settings
    return CurationConfig(
        heldout_percent=settings.heldout_percent,
        near_duplicate_threshold=None,
        scrub_pii=settings.scrub_pii,
        label_cap=settings.label_cap,
    )
