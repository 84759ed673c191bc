"""Shadow and audit scoring, off the request path.

Shadow: the teacher served; a sampled share of requests is also sent to the student.
Audit: the student served; a sampled share is also sent to the teacher. Either way the two
answers are scored with the task's metric and stored pair by pair. The queue is bounded
and its workers few: when it is full, a job is dropped and counted, and the client is
never slowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.agreement import Similarity, score
from core.metrics import Metrics
from core.profile import prompt_key
from core.tables import ShadowResult
from router.policy import Policy
from router.student import Student, StudentReply, StudentUnavailable

log = logging.getLogger("stillroom.router")


@dataclass(frozen=True, slots=True)
class TeacherAnswer:
    text: str
    exchange_id: str | None  # the stored exchange holding it


AskTeacher = Callable[[dict[str, Any]], Awaitable[TeacherAnswer | None]]
ScoringKind = Literal["shadow", "audit"]


@dataclass(frozen=True, slots=True)
class ScoringJob:
    kind: ScoringKind
    policy: Policy
    payload: dict[str, Any]
    teacher_text: str | None = None  # shadow: known; audit: asked for
    student_reply: StudentReply | None = None  # audit: known; shadow: asked for
    ask_teacher: AskTeacher | None = None  # audit: how to ask (with the client's key)
    # Shadow: the exchange the teacher served; audit: the teacher call made to check it.
    exchange_id: str | None = None


@dataclass(frozen=True, slots=True)
class ShadowScoring:
    """A routing decision's order to score the student on this request against the
    teacher's answer, once the teacher has answered in full."""

    policy: Policy
    payload: dict[str, Any]

    def job(self, *, teacher_text: str, exchange_id: str) -> ScoringJob:
        return ScoringJob(
            "shadow", self.policy, self.payload, teacher_text=teacher_text, exchange_id=exchange_id
        )


@dataclass(frozen=True, slots=True)
class AuditScoring:
    """A routing decision's order to ask the teacher the same question, off the request
    path, and score the answer the student served against it."""

    policy: Policy
    payload: dict[str, Any]
    student_reply: StudentReply

    def job(self, ask_teacher: AskTeacher) -> ScoringJob:
        return ScoringJob(
            "audit",
            self.policy,
            self.payload,
            student_reply=self.student_reply,
            ask_teacher=ask_teacher,
        )


class Scorer:
    def __init__(
        self,
        *,
        engine: Engine,
        student: Student,
        metrics: Metrics,
        similarity: Similarity | None = None,
        text_threshold: float = 0.85,
        queue_size: int = 1000,
        workers: int = 2,
    ) -> None:
        self.engine = engine
        self.student = student
        self.metrics = metrics
        self.similarity = similarity
        self.text_threshold = text_threshold
        # Audits first: each is one live answer's only check, while shadow pairs are
        # plentiful; behind a backlog of shadow jobs, audits would wait for minutes.
        self._queue: asyncio.PriorityQueue[tuple[int, int, ScoringJob]] = asyncio.PriorityQueue(
            maxsize=queue_size
        )
        self._submitted = itertools.count()
        self._workers = workers
        self._tasks: list[asyncio.Task[None]] = []

    def submit(self, job: ScoringJob) -> bool:
        """Queue a job; False (and counted) when the queue is full."""
        try:
            priority = 0 if job.kind == "audit" else 1
            self._queue.put_nowait((priority, next(self._submitted), job))
        except asyncio.QueueFull:
            self.metrics.scoring_dropped.labels(kind=job.kind).inc()
            return False
        return True

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"stillroom-scorer-{n}")
            for n in range(self._workers)
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def join(self) -> None:
        """Wait until every queued job is scored (for tests and clean shutdowns)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            _, _, job = await self._queue.get()
            try:
                await self._score(job)
            except Exception:
                log.exception("scoring a %s pair failed", job.kind)
            finally:
                self._queue.task_done()

    async def _score(self, job: ScoringJob) -> None:
        student = job.policy.student
        if student is None:
            return
        reply = job.student_reply
        if reply is None:
            try:
                reply = await self.student.answer(student, job.payload)
            except StudentUnavailable as exc:
                self.metrics.scoring_failures.labels(kind=job.kind, side="student").inc()
                log.info(
                    "shadow call to v%s of %s failed: %s", student.number, job.policy.task, exc
                )
                return
        teacher_text, exchange_id = job.teacher_text, job.exchange_id
        if teacher_text is None and job.ask_teacher is not None:
            answer = await job.ask_teacher(job.payload)
            if answer is not None:
                teacher_text, exchange_id = answer.text, answer.exchange_id
        if teacher_text is None:
            self.metrics.scoring_failures.labels(kind=job.kind, side="teacher").inc()
            return
        result = await asyncio.to_thread(
            score,
            student.metric,  # type: ignore[arg-type]
            reply.text,
            teacher_text,
            similarity=self.similarity,
            text_threshold=self.text_threshold,
        )
        row = ShadowResult(
            id=uuid.uuid4().hex,
            task=job.policy.task,
            version_id=student.version_id,
            kind=job.kind,
            exchange_id=exchange_id,
            input_text=prompt_key(job.payload.get("messages") or []),
            agrees=result.agrees,
            score=result.value,
            confidence=reply.confidence if reply.confidence > float("-inf") else None,
            student_answer=reply.text,
            teacher_answer=teacher_text,
            student_latency_ms=reply.seconds * 1000,
        )
        await asyncio.to_thread(self._store, row)
        self.metrics.scored.labels(
            task=job.policy.task, kind=job.kind, agrees="true" if result.agrees else "false"
        ).inc()

    def _store(self, row: ShadowResult) -> None:
        with Session(self.engine) as session:
            session.add(row)
            session.commit()
