"""Per-task routing policy, read from the store and cached briefly in each process, so
that a change made through any replica takes effect on all of them within seconds."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.tables import StudentVersion, Task
from router.periodic import Periodic

log = logging.getLogger("stillroom.router")

Mode = Literal["off", "shadow", "live"]
MODES: tuple[Mode, ...] = ("off", "shadow", "live")


@dataclass(frozen=True, slots=True)
class StudentRef:
    """The live student version of a task, as routing needs it."""

    version_id: str
    number: int
    kind: str
    adapter_name: str
    metric: str
    confidence_threshold: float | None
    profile: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Policy:
    task: str
    mode: Mode = "off"
    cutover_percent: float = 0.0
    shadow_percent: float = 100.0
    audit_percent: float = 5.0
    student: StudentRef | None = None

    @property
    def routable(self) -> bool:
        return self.student is not None and self.mode != "off"


OFF = Policy(task="")


def load_policies(engine: Engine) -> dict[str, Policy]:
    """Every task's policy, with its live version (one query)."""
    with Session(engine) as session:
        rows = session.exec(
            select(Task, StudentVersion).join(
                StudentVersion,
                col(Task.active_version_id) == StudentVersion.id,
                isouter=True,
            )
        ).all()
    policies = {}
    for task, version in rows:
        student = None
        if version is not None:
            threshold = task.confidence_threshold
            if threshold is None:
                threshold = version.confidence_threshold
            student = StudentRef(
                version_id=version.id,
                number=version.number,
                kind=version.kind,
                adapter_name=version.adapter_name,
                metric=version.metric or "text",
                confidence_threshold=threshold,
                profile=dict(version.evaluation.get("profile") or {}),
            )
        mode = task.mode if task.mode in MODES else "off"
        policies[task.name] = Policy(
            task=task.name,
            mode=mode,
            cutover_percent=task.cutover_percent,
            shadow_percent=task.shadow_percent,
            audit_percent=task.audit_percent,
            student=student,
        )
    return policies


class PolicyCache:
    """Policies refreshed from the store every ``ttl`` seconds by a background task; the
    request path only reads a dict."""

    def __init__(self, engine: Engine, *, ttl: float = 1.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._policies: dict[str, Policy] = {}
        self._refresher = Periodic("policy-refresh", ttl, self.refresh)

    def get(self, task: str) -> Policy:
        return self._policies.get(task) or Policy(task=task)

    async def refresh(self) -> None:
        self._policies = await asyncio.to_thread(load_policies, self.engine)

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # serve with no policies (teacher only) until it answers
            log.warning("could not load routing policies: %s", exc)
        self._refresher.start()

    async def close(self) -> None:
        await self._refresher.close()
