"""The distiller's loop: queue tasks that have enough new pairs, and train queued runs one
at a time. Several distiller processes may share one Postgres store: a run is claimed
atomically, and an advisory lock per task keeps a task from being queued or trained twice.

Fresh data: a run curates the pairs stored when it starts. A ``train`` asked for while a
run of the task is in progress queues a follow-up run behind it (see
``core.store.queue_training``), which curates everything stored by the time it starts.
And when a run that produced a version finishes with its pairs (successful teacher
exchanges counted when it started) fewer than ``FRESH_SHARE`` (80%) of those stored by
then, a retraining is queued at once (trigger ``stale``), without waiting for the next
``distill_new_pairs``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlmodel import Session, col, func, select

from core.deletion import Deletion
from core.retention import delete_expired
from core.store import queue_training
from core.tables import Exchange, StudentVersion, TrainingRun
from distiller import registry
from distiller.pipeline import Pipeline

log = logging.getLogger("stillroom.distiller")

STALE_AFTER = timedelta(minutes=15)
QUEUE_POLL_SECONDS = 2.0
FRESH_SHARE = 0.8
# Who served exchanges that are no new teacher answer: never pairs, never a reason to train.
NOT_PAIRS = ("student", "cache")


def task_lock_key(task: str) -> int:
    """A signed 64-bit advisory lock key for a task name."""
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:8], "big", signed=True)


class Distiller:
    """Trains tasks as their pairs accumulate, and runs queued (manual) trainings."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.engine = pipeline.engine
        self.settings = pipeline.settings
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Schedule the jobs (queueing, training, retention) on the running event loop."""
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self.queue_due_tasks,
            "interval",
            seconds=self.settings.distill_interval_seconds,
            max_instances=1,
            coalesce=True,
            id="queue-due",
        )
        scheduler.add_job(
            self.run_queued,
            "interval",
            seconds=QUEUE_POLL_SECONDS,
            max_instances=1,
            coalesce=True,
            id="run-queued",
        )
        scheduler.add_job(
            self.delete_expired,
            "interval",
            seconds=self.settings.retention_check_seconds,
            max_instances=1,
            coalesce=True,
            id="retention",
        )
        scheduler.start()
        self._scheduler = scheduler

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def due_tasks(self) -> list[str]:
        """Tasks whose successful teacher exchanges since their last run reach the
        threshold (the first version needs more)."""
        due = []
        with Session(self.engine) as session:
            counts = dict(
                session.exec(
                    select(Exchange.task, func.count())
                    .where(Exchange.status == "ok", col(Exchange.served_by).not_in(NOT_PAIRS))
                    .group_by(col(Exchange.task))
                ).all()
            )
            for task, count in counts.items():
                self.pipeline.metrics.prepare_task(task)
                last = session.exec(
                    select(TrainingRun)
                    .where(TrainingRun.task == task)
                    .order_by(col(TrainingRun.created_at).desc())
                ).first()
                has_version = session.exec(
                    select(StudentVersion.id).where(StudentVersion.task == task)
                ).first()
                if last is not None and last.state in ("queued", "running"):
                    continue
                fresh = count if last is None else self._pairs_since(session, task, last, count)
                needed = (
                    self.settings.distill_new_pairs
                    if has_version
                    else (self.settings.distill_first_pairs)
                )
                if fresh >= needed:
                    due.append(task)
        return sorted(due)

    @staticmethod
    def _pairs_since(session: Session, task: str, last: TrainingRun, count: int) -> int:
        """The task's pairs its last run did not see: beyond the count it saw, or stored
        since it started, whichever is more (retention deletes old pairs, so the count
        alone can stay below what the last run saw however many new ones arrive)."""
        since = last.started_at or last.created_at
        stored_since = session.exec(
            select(func.count())
            .select_from(Exchange)
            .where(
                Exchange.task == task,
                Exchange.status == "ok",
                col(Exchange.served_by).not_in(NOT_PAIRS),
                col(Exchange.created_at) > since,
            )
        ).one()
        return max(count - last.exchanges_seen, stored_since)

    async def queue_due_tasks(self) -> list[TrainingRun]:
        runs = []
        for task in self.due_tasks():
            runs.append(queue_training(engine=self.engine, task=task, trigger="schedule"))
            log.info("queued training of %s: enough new pairs", task)
        return runs

    async def delete_expired(self) -> dict[str, Deletion]:
        """Delete exchanges older than their task's retention (see ``core.retention``): here,
        because one process does the background work, off the proxies' request paths."""
        return await asyncio.to_thread(
            delete_expired,
            engine=self.engine,
            settings=self.settings,
            metrics=self.pipeline.metrics,
        )

    async def run_queued(self) -> list[StudentVersion | None]:
        """Train every queued run this process can claim, oldest first."""
        self._fail_stale_runs()
        outcomes = []
        with Session(self.engine) as session:
            queued = session.exec(
                select(TrainingRun)
                .where(TrainingRun.state == "queued")
                .order_by(col(TrainingRun.created_at))
            ).all()
            session.expunge_all()
        for run in queued:
            with self._task_lock(run.task) as locked:
                if not locked or not registry.claim_run(engine=self.engine, run_id=run.id):
                    continue
                raw = self._raw_pairs(run.task)
                registry.update_run(engine=self.engine, run_id=run.id, exchanges_seen=raw)
                log.info("training %s (run %s)", run.task, run.id)
                version = await self.pipeline.run(run)
                outcomes.append(version)
                if version is not None:
                    self.retrain_if_stale(run.task, raw)
        return outcomes

    def retrain_if_stale(self, task: str, trained_on: int) -> TrainingRun | None:
        """Queue a retraining when a run that just finished saw fewer than ``FRESH_SHARE``
        of the task's pairs stored by now (they arrived while it trained)."""
        available = self._raw_pairs(task)
        if available == 0 or trained_on >= FRESH_SHARE * available:
            return None
        log.info(
            "queued training of %s: its last run had %d of the %d pairs stored now",
            task,
            trained_on,
            available,
        )
        return queue_training(engine=self.engine, task=task, trigger="stale")

    def _raw_pairs(self, task: str) -> int:
        with Session(self.engine) as session:
            return session.exec(
                select(func.count())
                .select_from(Exchange)
                .where(
                    Exchange.task == task,
                    Exchange.status == "ok",
                    col(Exchange.served_by).not_in(NOT_PAIRS),
                )
            ).one()

    def _fail_stale_runs(self) -> None:
        cutoff = registry.now() - STALE_AFTER
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(TrainingRun)
                .where(col(TrainingRun.state) == "running", col(TrainingRun.updated_at) < cutoff)
                .values(
                    state="failed",
                    error="no progress for 15 minutes: the distiller running it stopped",
                    finished_at=registry.now(),
                )
            )

    @contextmanager
    def _task_lock(self, task: str) -> Iterator[bool]:
        """On Postgres, an advisory lock held for the whole training of ``task``."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        key = task_lock_key(task)
        with self.engine.connect() as connection:
            locked = bool(
                connection.execute(
                    sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
                ).scalar_one()
            )
            connection.commit()
            try:
                yield locked
            finally:
                if locked:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
