"""Auto-ramp (per task, off by default): after a version is published the task shadows
it; once enough scored pairs of answers it would serve (at or above its confidence
threshold) agree at the task's target, it goes live at 10, 25, 50, then 100%,
with the same check at each step. Drift steps it back down to shadow (see drift.py). Each
step is a transition with cause ``auto_ramp`` (see ``core.transitions``)."""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.settings import Settings
from core.tables import Mode, ShadowResult, StudentVersion, Task
from core.task_policy import TaskPolicy, effective_policy
from core.transitions import change_mode
from router.gates import served_agreement

log = logging.getLogger("stillroom.router")

STAGES: list[tuple[Mode, float]] = [
    ("shadow", 0.0),
    ("live", 10.0),
    ("live", 25.0),
    ("live", 50.0),
    ("live", 100.0),
]


def next_stage(mode: str, cutover: float) -> tuple[Mode, float] | None:
    """The stage after (mode, cutover), or None at the top (or off the ladder)."""
    for position, stage in enumerate(STAGES[:-1]):
        if stage == (mode, cutover) or (mode == "shadow" and stage[0] == "shadow"):
            return STAGES[position + 1]
    return None


def ramp(engine: Engine, settings: Settings) -> list[tuple[str, Mode, float]]:
    """Move every auto-ramp task whose current stage has earned it one stage up.
    Returns (task, mode, cutover) of the tasks moved."""
    moved = []
    with Session(engine) as session:
        tasks = session.exec(
            select(Task)
            .where(
                col(Task.auto_ramp).is_(True),
                col(Task.active_version_id).is_not(None),
                col(Task.mode) != "off",
            )
            .with_for_update()
        ).all()
        for task in tasks:
            policy = effective_policy(task, settings)
            stage = next_stage(task.mode, task.cutover_percent)
            if stage is None:
                continue
            earned = _earned(session, task, policy)
            if earned is None:
                continue
            mode, cutover = stage
            change_mode(
                session=session,
                task=task,
                cause="auto_ramp",
                reason=earned,
                mode=mode,
                cutover_percent=cutover,
            )
            moved.append((task.name, mode, cutover))
            log.info("auto-ramp: %s moves to %s %g%% (%s)", task.name, mode, cutover, earned)
        session.commit()
    return moved


def _earned(session: Session, task: Task, policy: TaskPolicy) -> str | None:
    """Why the task's current stage has earned it the next one, or None if it has not."""
    version = session.get(StudentVersion, task.active_version_id)
    if version is None:
        return None
    query = select(ShadowResult.kind, ShadowResult.agrees, ShadowResult.confidence).where(
        ShadowResult.version_id == version.id
    )
    if task.stage_started_at is not None:
        query = query.where(ShadowResult.created_at >= task.stage_started_at)
    rows = list(session.exec(query).all())
    agreement, pairs = served_agreement(rows, policy.threshold_for(version))
    if agreement is None or pairs < policy.ramp_min_pairs:
        return None
    if agreement < policy.target_agreement:
        return None
    return (
        f"v{version.number} agreed {agreement:.1%} over {pairs} scored pairs since the "
        f"stage began (target {policy.target_agreement:.0%})"
    )
