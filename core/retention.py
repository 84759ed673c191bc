"""Retention: exchanges older than their task's retention are deleted, in the background.

A task keeps its exchanges for its own ``retention_days`` when it has one (``PATCH
/admin/tasks/{task}``), else for ``STILLROOM_RETENTION_DAYS``; with neither, for ever.

One set of old exchanges is kept past the retention: the held-out exchanges of the task's
live (active) version, the ones its evaluation was measured on. That evaluation lists
them by id (``VersionEvaluation.heldout``, at most ~10% of what the version was curated
from, all created before its training run), and the proxy goes on reading them for as
long as the version is live: the difficulty gate seeds its neighbours with them, and a
publish or rollback health-checks a version with one. When another version goes live (or
the task is rolled back to one) the old held-out rows are no longer needed and the next
round deletes them. Deletion on request keeps none of them (a person's request wins).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.deletion import Deletion, ExchangeFilter, delete_exchanges
from core.evaluation import read_evaluation
from core.metrics import Metrics
from core.settings import Settings
from core.tables import StudentVersion, Task

log = logging.getLogger("stillroom.retention")


@dataclass(frozen=True, slots=True)
class TaskRetention:
    """One task's retention as of a round: what is older than ``cutoff`` goes, less
    ``keep`` (its live version's held-out exchanges)."""

    task: str
    days: float
    cutoff: datetime
    keep: frozenset[str]


def retentions(
    *, session: Session, settings: Settings, now: datetime | None = None
) -> list[TaskRetention]:
    """Every task that keeps its exchanges for a bounded time, with what to keep."""
    now = now if now is not None else datetime.now(UTC)
    bounded = []
    for task in session.exec(select(Task).order_by(col(Task.name))).all():
        days = task.retention_days if task.retention_days is not None else settings.retention_days
        if days is None:
            continue
        bounded.append(
            TaskRetention(
                task=task.name,
                days=days,
                cutoff=now - timedelta(days=days),
                keep=live_heldout(session=session, task=task),
            )
        )
    return bounded


def live_heldout(*, session: Session, task: Task) -> frozenset[str]:
    """The ids of the exchanges the task's live version was evaluated on."""
    if task.active_version_id is None:
        return frozenset()
    version = session.get(StudentVersion, task.active_version_id)
    if version is None:
        return frozenset()
    return frozenset(exchange_id for exchange_id, _agreed in read_evaluation(version).heldout)


def delete_expired(
    *,
    engine: Engine,
    settings: Settings,
    metrics: Metrics,
    now: datetime | None = None,
) -> dict[str, Deletion]:
    """One retention round: delete every task's expired exchanges (and what holds their
    text), count them, and log each task that lost any. What was deleted, by task."""
    with Session(engine) as session:
        bounded = retentions(session=session, settings=settings, now=now)
    deleted: dict[str, Deletion] = {}
    for retention in bounded:
        gone = delete_exchanges(
            engine=engine,
            selection=ExchangeFilter(task=retention.task, before=retention.cutoff),
            keep=retention.keep,
            batch_size=settings.retention_batch_size,
        )
        if not (gone.total_exchanges or gone.shadow_results):
            continue
        deleted[retention.task] = gone
        metrics.exchanges_deleted.labels(reason="retention").inc(gone.total_exchanges)
        log.info(
            "retention deleted %d exchanges of %s older than %g days (%d audits, %d shadow "
            "results); its live version's %d held-out exchanges are kept",
            gone.total_exchanges,
            retention.task,
            retention.days,
            gone.audit_exchanges,
            gone.shadow_results,
            len(retention.keep),
        )
    return deleted
