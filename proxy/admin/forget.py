"""``DELETE /admin/exchanges``: forget a person's, a task's or a period's exchanges.

Filters (at least one; together they all apply): ``user`` (``exchanges.end_user``: the
request's ``user`` field, else its ``X-Stillroom-Route-Key``), ``task`` (named as under
``/admin/tasks/{task}``, with ``?tenant=``) and ``before`` (an ISO 8601 date or
timezone-aware datetime). ``dry_run=true`` counts what would go and deletes nothing.

What goes is what ``core.deletion`` says (the exchanges, their audits and shadow results),
and the same exchanges in this process's capture: it waits for queued exchanges to be
written (or spilled), then removes matching lines from the spill files in its data folder,
then deletes from the store. Another replica's spill folder is purged only by a request to
that replica (see the README).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlmodel import Session

from core.deletion import ExchangeFilter, count_exchanges_to_delete, delete_exchanges
from core.errors import InvalidRequestError
from proxy.admin.api import require_admin
from proxy.admin.task_lookup import TenantQuery, resolve_task
from proxy.gateway.deps import RuntimeDep
from proxy.gateway.runtime import Runtime

log = logging.getLogger("stillroom.admin")

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

# Longest wait for queued exchanges to reach the store (or a spill file) before deleting.
CAPTURE_FLUSH_SECONDS = 10.0


def parse_before(value: str) -> datetime:
    """An ISO 8601 date (that day's start, UTC) or a datetime with a timezone; 400 else."""
    try:
        if len(value) <= 10:
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            f"before must be an ISO 8601 date or datetime, got {value!r}", param="before"
        ) from None
    if moment.tzinfo is None:
        raise InvalidRequestError(
            f"before {value!r} needs a timezone (Z or +HH:MM)", param="before"
        )
    return moment


@router.delete("/exchanges")
async def delete_exchanges_route(
    runtime: RuntimeDep,
    user: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    task: Annotated[str | None, Query(min_length=1)] = None,
    before: Annotated[str | None, Query(description="ISO 8601 date or datetime")] = None,
    tenant: TenantQuery = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete (or with ``dry_run``, count) the exchanges the filters select, and what holds
    their text; the counts."""
    selection = await asyncio.to_thread(_selection, runtime, user, task, before, tenant)
    if dry_run:
        counted = await asyncio.to_thread(
            count_exchanges_to_delete, engine=runtime.engine, selection=selection
        )
        return {**_answer(selection, dry_run=True), **counted.document(), "spilled": 0}
    spilled = await _forget_captured(runtime, selection)
    deleted = await asyncio.to_thread(
        delete_exchanges,
        engine=runtime.engine,
        selection=selection,
        batch_size=runtime.settings.retention_batch_size,
    )
    runtime.metrics.exchanges_deleted.labels(reason="request").inc(deleted.total_exchanges)
    log.info(
        "deleted on request (%s): %d exchanges, %d audits, %d shadow results, %d spilled",
        ", ".join(f"{k}={v}" for k, v in selection.document().items() if v is not None),
        deleted.exchanges,
        deleted.audit_exchanges,
        deleted.shadow_results,
        spilled,
    )
    return {**_answer(selection, dry_run=False), **deleted.document(), "spilled": spilled}


def _selection(
    runtime: Runtime,
    user: str | None,
    task: str | None,
    before: str | None,
    tenant: str | None,
) -> ExchangeFilter:
    if user is None and task is None and before is None:
        raise InvalidRequestError("say which exchanges to delete: user=, task= or before=")
    key = None
    if task is not None:
        with Session(runtime.engine) as session:
            key = resolve_task(session, task, tenant).name
    elif tenant is not None:
        raise InvalidRequestError("tenant= picks the tenant of task=; name a task", param="tenant")
    return ExchangeFilter(
        user=user, task=key, before=parse_before(before) if before is not None else None
    )


async def _forget_captured(runtime: Runtime, selection: ExchangeFilter) -> int:
    """Let exchanges already queued reach the store or a spill file, then purge the spill
    files; the lines purged. A purge waits for a spill file being replayed to be written."""
    capture = runtime.capture
    if capture is None:
        return 0
    try:
        await asyncio.wait_for(capture.flush(), CAPTURE_FLUSH_SECONDS)
    except TimeoutError:
        log.warning("capture queue still busy after %gs; deleting anyway", CAPTURE_FLUSH_SECONDS)
    return await asyncio.to_thread(capture.purge, selection)


def _answer(selection: ExchangeFilter, *, dry_run: bool) -> dict[str, Any]:
    return {"object": "exchanges.deletion", "dry_run": dry_run, "filter": selection.document()}
