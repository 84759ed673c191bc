"""What one task is held to: each setting, unless the task overrides it.

Routing, calibration, the publish gate, auto-ramp and drift all read a task's figures from
:func:`effective_policy`, so that an override set on a task (``PATCH /admin/tasks/{task}``)
means the same to each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Settings
from core.tables import StudentVersion, Task


@dataclass(frozen=True, slots=True)
class TaskPolicy:
    """A task's effective figures."""

    target_agreement: float
    """Agreement the student must reach on what it answers: calibration aims at it, the
    publish gate and auto-ramp hold a version to it."""
    publish_min_share: float
    """Held-out share a version must answer at the target to be published."""
    confidence_threshold: float | None
    """The task's own threshold (an admin's): it wins over the controller's and the
    calibrated one. None: the controller's for the version it was set for, else each
    version's calibrated one."""
    shadow_percent: float
    audit_percent: float
    auto_ramp: bool
    ramp_min_pairs: int
    drift_agreement_floor: float
    """Window agreement below which a live task steps down: the setting, but never above
    the task's target (a task that asks for 80% is not in drift at 84%)."""

    controlled_threshold: float | None = None
    """The threshold controller's, for ``controlled_version_id`` only."""
    controlled_version_id: str | None = None
    cache_seconds: float = 0.0
    """How long a teacher answer answers identical deterministic requests again: the
    task's own window, else ``STILLROOM_CACHE_SECONDS``; 0: no cache."""

    @property
    def overridden(self) -> bool:
        """An admin set the task's threshold: the controller leaves it alone."""
        return self.confidence_threshold is not None

    def threshold_for(self, version: StudentVersion | None) -> float | None:
        """The confidence at or above which ``version`` answers for this task: the admin's
        threshold, else the controller's for this very version, else the calibrated one
        (a version that never reached the target has none, and serves nothing)."""
        if self.confidence_threshold is not None:
            return self.confidence_threshold
        if version is None or version.confidence_threshold is None:
            return None
        if self.controlled_threshold is not None and self.controlled_version_id == version.id:
            return self.controlled_threshold
        return version.confidence_threshold


def effective_policy(task: Task | None, settings: Settings) -> TaskPolicy:
    """``task``'s policy under ``settings`` (a task not stored yet gets the settings')."""
    row = task if task is not None else Task(name="")
    target = settings.target_agreement if row.target_agreement is None else row.target_agreement
    return TaskPolicy(
        target_agreement=target,
        publish_min_share=settings.publish_min_share,
        confidence_threshold=row.confidence_threshold,
        shadow_percent=row.shadow_percent,
        audit_percent=row.audit_percent,
        auto_ramp=row.auto_ramp,
        ramp_min_pairs=settings.ramp_min_pairs,
        drift_agreement_floor=min(settings.drift_agreement_floor, target),
        controlled_threshold=row.controlled_threshold,
        controlled_version_id=row.controlled_version_id,
        cache_seconds=settings.cache_seconds if row.cache_seconds is None else row.cache_seconds,
    )
