"""Per-task routing policy, read from the store and cached briefly in each process, so
that a change made through any replica takes effect on all of them within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.tables import StudentVersion, Task

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
        self._task: asyncio.Task[None] | None = None

    def get(self, task: str) -> Policy:
        return self._policies.get(task) or Policy(task=task)

    async def refresh(self) -> None:
        self._policies = await asyncio.to_thread(load_policies, self.engine)

    async def start(self) -> None:
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="stillroom-policy-cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl)
            try:
                await self.refresh()
            except Exception as exc:  # keep the last policies while the store is away
                log.warning("could not refresh routing policies: %s", exc)
