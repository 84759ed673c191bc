"""Per-task routing policy, read from the store and cached briefly in each process, so
that a change made through any replica takes effect on all of them within seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.evaluation import read_evaluation
from core.metrics import Metrics
from core.settings import Settings
from core.tables import MODES, Mode, StudentVersion, Task
from core.task_policy import effective_policy
from router.periodic import Periodic

__all__ = ["MODES", "OFF", "Mode", "Policy", "PolicyCache", "StudentRef", "load_policies"]

log = logging.getLogger("stillroom.router")


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
    cache_seconds: float = 0.0  # the task's effective cache window (core.task_policy); 0: off

    @property
    def routable(self) -> bool:
        return self.student is not None and self.mode != "off"


OFF = Policy(task="")


def load_policies(engine: Engine, settings: Settings) -> dict[str, Policy]:
    """Every task's policy (its effective one, see ``core.task_policy``), with its live
    version (one query)."""
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
        effective = effective_policy(task, settings)
        student = None
        if version is not None:
            profile = read_evaluation(version).profile
            student = StudentRef(
                version_id=version.id,
                number=version.number,
                kind=version.kind,
                adapter_name=version.adapter_name,
                metric=version.metric or "text",
                confidence_threshold=effective.threshold_for(version),
                profile=profile.rules() if profile is not None else {},
            )
        mode = task.mode if task.mode in MODES else "off"
        policies[task.name] = Policy(
            task=task.name,
            mode=mode,
            cutover_percent=task.cutover_percent,
            shadow_percent=effective.shadow_percent,
            audit_percent=effective.audit_percent,
            student=student,
            cache_seconds=effective.cache_seconds,
        )
    return policies


class PolicyCache:
    """Policies refreshed from the store every ``ttl`` seconds by a background task; the
    request path only reads a dict. With ``metrics``, each task's mode, cutover and live
    version are exported as this process last read them."""

    def __init__(
        self,
        engine: Engine,
        *,
        ttl: float = 1.0,
        metrics: Metrics | None = None,
        prepare: Callable[[dict[str, Policy]], Awaitable[None]] | None = None,
        settings: Settings | None = None,
    ) -> None:
        """``prepare`` is awaited with new policies before they take effect (to load what
        their students need, so that a new version serves its first request ready).
        Without ``settings``, the environment's: routing reads only what each task sets."""
        self.engine = engine
        self.settings = settings if settings is not None else Settings()
        self.ttl = ttl
        self.metrics = metrics
        self.prepare = prepare
        self._policies: dict[str, Policy] = {}
        self._refresher = Periodic("policy-refresh", ttl, self.refresh)

    def get(self, task: str) -> Policy:
        """``task``'s policy; a task not read yet gets the settings' (its cache window)."""
        return self._policies.get(task) or Policy(
            task=task, cache_seconds=self.settings.cache_seconds
        )

    async def refresh(self) -> None:
        policies = await asyncio.to_thread(load_policies, self.engine, self.settings)
        if self.prepare is not None:
            await self.prepare(policies)
        if self.metrics is not None:
            export_policies(self.metrics, policies, previous=self._policies)
        self._policies = policies

    async def start(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # serve with no policies (teacher only) until it answers
            log.warning("could not load routing policies: %s", exc)
        self._refresher.start()

    async def close(self) -> None:
        await self._refresher.close()


def export_policies(
    metrics: Metrics, policies: dict[str, Policy], *, previous: dict[str, Policy]
) -> None:
    """Set the policy gauges of every task whose policy changed since ``previous`` (all of
    them on the first refresh)."""
    for name, policy in policies.items():
        if previous.get(name) == policy:
            continue
        for mode in MODES:
            metrics.task_mode.labels(task=name, mode=mode).set(1 if policy.mode == mode else 0)
        metrics.task_cutover_percent.labels(task=name).set(policy.cutover_percent)
        number = policy.student.number if policy.student is not None else 0
        metrics.task_active_version.labels(task=name).set(number)
        if policy.student is not None:
            metrics.prepare_student(name)
        if policy.cache_seconds > 0:
            metrics.prepare_cache(name)
