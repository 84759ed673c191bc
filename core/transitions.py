"""The one writer of a task's mode and cutover.

An operator (the admin API), auto-ramp, drift step-down, publishing and rollback all move a
task between ``off``, ``shadow`` and ``live`` and along its cutover; each goes through
:func:`change_mode`, which also resets the stage clock auto-ramp counts from and keeps a
``task_transitions`` row saying what changed, what changed it and why. A change that
changes nothing writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from core.tables import Mode, Task, TaskTransition, TransitionCause, utcnow

RECENT_TRANSITIONS = 20


def change_mode(
    *,
    session: Session,
    task: Task,
    cause: TransitionCause,
    reason: str,
    mode: Mode | None = None,
    cutover_percent: float | None = None,
    at: datetime | None = None,
) -> TaskTransition | None:
    """Set ``task``'s mode and/or cutover (``None``: unchanged) in ``session``, and record
    the transition; the caller commits. Returns the transition, or None when neither
    changed (then the task, its stage clock included, is left as it was)."""
    to_mode = task.mode if mode is None else mode
    to_cutover = task.cutover_percent if cutover_percent is None else float(cutover_percent)
    if to_mode == task.mode and to_cutover == task.cutover_percent:
        return None
    moment = at if at is not None else utcnow()
    transition = TaskTransition(
        id=uuid.uuid4().hex,
        task=task.name,
        from_mode=task.mode,
        to_mode=to_mode,
        from_cutover_percent=task.cutover_percent,
        to_cutover_percent=to_cutover,
        cause=cause,
        reason=reason,
        created_at=moment,
    )
    task.mode = to_mode
    task.cutover_percent = to_cutover
    task.stage_started_at = moment
    session.add(task)
    session.add(transition)
    return transition


def lock_task(*, session: Session, name: str) -> Task | None:
    """The task's row, locked until the session's transaction ends (on Postgres; SQLite
    has one writer at a time anyway), so that two writers of its mode never interleave."""
    return session.get(Task, name, with_for_update=True)


def recent_transitions(
    *, session: Session, task: str, limit: int = RECENT_TRANSITIONS
) -> Sequence[TaskTransition]:
    """The task's latest transitions, newest first."""
    return session.exec(
        select(TaskTransition)
        .where(TaskTransition.task == task)
        .order_by(col(TaskTransition.created_at).desc(), col(TaskTransition.id))
        .limit(limit)
    ).all()
