"""Auto-ramp (per task, off by default): after a version is published the task shadows
it; once enough scored pairs of answers it would serve (at or above its confidence
threshold) agree at the target, it goes live at 10, 25, 50, then 100%,
with the same check at each step. Drift steps it back down to shadow (see drift.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.settings import Settings
from core.tables import ShadowResult, StudentVersion, Task
from router.gates import served_agreement

log = logging.getLogger("stillroom.router")

STAGES: list[tuple[str, float]] = [
    ("shadow", 0.0),
    ("live", 10.0),
    ("live", 25.0),
    ("live", 50.0),
    ("live", 100.0),
]


def next_stage(mode: str, cutover: float) -> tuple[str, float] | None:
    """The stage after (mode, cutover), or None at the top (or off the ladder)."""
    for position, stage in enumerate(STAGES[:-1]):
        if stage == (mode, cutover) or (mode == "shadow" and stage[0] == "shadow"):
            return STAGES[position + 1]
    return None


def ramp(engine: Engine, settings: Settings) -> list[tuple[str, str, float]]:
    """Move every auto-ramp task whose current stage has earned it one stage up.
    Returns (task, mode, cutover) of the tasks moved."""
    moved = []
    with Session(engine) as session:
        tasks = session.exec(
            select(Task).where(
                col(Task.auto_ramp).is_(True),
                col(Task.active_version_id).is_not(None),
                col(Task.mode) != "off",
            )
        ).all()
        for task in tasks:
            stage = next_stage(task.mode, task.cutover_percent)
            if stage is None or not _earned(session, task, settings):
                continue
            task.mode, task.cutover_percent = stage
            task.stage_started_at = datetime.now(UTC)
            session.add(task)
            moved.append((task.name, stage[0], stage[1]))
            log.info("auto-ramp: %s moves to %s %g%%", task.name, stage[0], stage[1])
        session.commit()
    return moved


def _earned(session: Session, task: Task, settings: Settings) -> bool:
    version = session.get(StudentVersion, task.active_version_id)
    if version is None:
        return False
    query = select(ShadowResult.kind, ShadowResult.agrees, ShadowResult.confidence).where(
        ShadowResult.version_id == version.id
    )
    if task.stage_started_at is not None:
        query = query.where(ShadowResult.created_at >= task.stage_started_at)
    threshold = (
        task.confidence_threshold
        if task.confidence_threshold is not None
        else version.confidence_threshold
    )
    agreement, pairs = served_agreement(list(session.exec(query).all()), threshold)
    if agreement is None or pairs < settings.ramp_min_pairs:
        return False
    return agreement >= (task.target_agreement or settings.target_agreement)
