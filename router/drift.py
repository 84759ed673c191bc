"""Drift: when a live student's inputs or agreement move away from what it was published
on, the task steps down from live to shadow and a retraining is queued.

- Input drift: the mean distance (1 - cosine, MiniLM) of the latest inputs to their nearest
  training input, over the same for the version's held-out inputs. 1.0 means recent traffic
  is as close to the training set as held-out traffic was.
- Agreement drift: agreement of the latest shadow and audit pairs of the live version,
  with the answers apps rated bad (feedback: each counts as a failed audit).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.embedding import Encoder
from core.metrics import Metrics
from core.profile import in_heldout, prompt_key
from core.settings import Settings
from core.store import queue_training
from core.tables import DriftReport, Exchange, ShadowResult, StudentVersion, Task
from core.task_policy import effective_policy
from core.transitions import change_mode, lock_task
from router.gates import served_agreement
from router.periodic import Periodic
from router.ramp import ramp
from router.threshold_control import steer

log = logging.getLogger("stillroom.router")

_REFERENCE_LIMIT = 2000
# Held-out inputs can sit almost on top of training ones (templated traffic); a distance
# floor keeps the ratio from calling ordinary variation drift.
_BASELINE_FLOOR = 0.1


@dataclass
class _Reference:
    """A version's training inputs (indexed) and its held-out baseline distance."""

    index: Any
    baseline: float


@dataclass
class DriftMonitor:
    engine: Engine
    encoder: Encoder
    settings: Settings
    metrics: Metrics
    _references: dict[str, _Reference | None] = field(default_factory=dict)

    async def check_all(self) -> list[DriftReport]:
        """Check every live or shadow task that has an active version."""
        with Session(self.engine) as session:
            tasks = session.exec(
                select(Task).where(
                    col(Task.mode).in_(["live", "shadow"]),
                    col(Task.active_version_id).is_not(None),
                )
            ).all()
            names = [t.name for t in tasks]
        reports = []
        for name in names:
            report = await asyncio.to_thread(self.check, name)
            if report is not None:
                reports.append(report)
        return reports

    def check(self, task: str) -> DriftReport | None:
        with Session(self.engine) as session:
            row = session.get(Task, task)
            if row is None or row.active_version_id is None:
                return None
            version = session.get(StudentVersion, row.active_version_id)
            if version is None:
                return None
            session.expunge(version)
            mode = row.mode
            policy = effective_policy(row, self.settings)
        agreement, pairs = self._window_agreement(version, policy.threshold_for(version))
        input_drift = self._input_drift(version)
        reasons: dict[str, str] = {}
        if agreement is not None and agreement < policy.drift_agreement_floor:
            reasons["agreement"] = (
                f"agreement {agreement:.1%} over the latest {pairs} scored pairs is below "
                f"{policy.drift_agreement_floor:.0%}"
            )
        if input_drift is not None and input_drift > self.settings.drift_input_ratio:
            reasons["input"] = (
                f"recent inputs are {input_drift:.2f}x as far from the training set as "
                f"held-out inputs (limit {self.settings.drift_input_ratio:g}x)"
            )
        self.metrics.prepare_task(task)
        if agreement is not None:
            self.metrics.drift_score.labels(task=task, kind="agreement").set(agreement)
        if input_drift is not None:
            self.metrics.drift_score.labels(task=task, kind="input").set(input_drift)
        action = "none"
        if reasons and mode == "live":
            stepped = self._step_down(
                task,
                "agreement" if "agreement" in reasons else "input",
                "; ".join(reasons.values()),
            )
            action = "stepped_down" if stepped else "none"
        report = DriftReport(
            id=uuid.uuid4().hex,
            task=task,
            version_id=version.id,
            input_drift=input_drift,
            window_agreement=agreement,
            scored_pairs=pairs,
            drifted=bool(reasons),
            action=action,
            reason="; ".join(reasons.values()) or None,
        )
        with Session(self.engine) as session:
            session.add(report)
            session.commit()
            session.refresh(report)
            session.expunge(report)
        if reasons:
            log.warning("drift on %s (%s): %s", task, action, report.reason)
        return report

    def _step_down(self, task: str, kind: str, reason: str) -> bool:
        """Live to shadow, and a retraining queued; False if the task left live meanwhile."""
        with Session(self.engine) as session, session.begin():
            row = lock_task(session=session, name=task)
            if row is None or row.mode != "live":
                return False
            change_mode(session=session, task=row, cause="drift", reason=reason, mode="shadow")
        queue_training(engine=self.engine, task=task, trigger="drift")
        self.metrics.step_downs.labels(task=task, reason=kind).inc()
        return True

    def _window_agreement(
        self, version: StudentVersion, threshold: float | None
    ) -> tuple[float | None, int]:
        """Agreement over the latest scored answers the student would have served."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(ShadowResult.kind, ShadowResult.agrees, ShadowResult.confidence)
                .where(ShadowResult.version_id == version.id)
                .order_by(col(ShadowResult.created_at).desc())
                .limit(self.settings.drift_window)
            ).all()
        agreement, pairs = served_agreement(list(rows), threshold)
        if pairs < self.settings.drift_min_samples:
            return None, pairs
        return agreement, pairs

    def _input_drift(self, version: StudentVersion) -> float | None:
        reference = self._reference(version)
        if reference is None:
            return None
        with Session(self.engine) as session:
            recent = session.exec(
                select(Exchange.request)
                .where(Exchange.task == version.task, Exchange.created_at > version.created_at)
                .order_by(col(Exchange.created_at).desc())
                .limit(self.settings.drift_window)
            ).all()
        if len(recent) < self.settings.drift_min_samples:
            return None
        distance = self._distance(reference, [prompt_key(r.get("messages") or []) for r in recent])
        return distance / reference.baseline

    def _reference(self, version: StudentVersion) -> _Reference | None:
        if version.id in self._references:
            return self._references[version.id]
        with Session(self.engine) as session:
            requests = session.exec(
                select(Exchange.request)
                .where(
                    Exchange.task == version.task,
                    Exchange.status == "ok",
                    Exchange.served_by != "student",
                    Exchange.created_at <= version.created_at,
                )
                .order_by(col(Exchange.created_at).desc())
                .limit(_REFERENCE_LIMIT)
            ).all()
        keys = sorted({prompt_key(r.get("messages") or []) for r in requests})
        train = [k for k in keys if not in_heldout(k, self.settings.heldout_percent)]
        heldout = [k for k in keys if in_heldout(k, self.settings.heldout_percent)]
        reference = None
        if len(train) >= self.settings.drift_min_samples and len(heldout) >= 5:
            import faiss

            vectors = self.encoder.encode(train)
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(np.ascontiguousarray(vectors))
            probe = _Reference(index=index, baseline=1.0)
            baseline = self._distance(probe, heldout)
            reference = _Reference(index=index, baseline=max(baseline, _BASELINE_FLOOR))
        self._references[version.id] = reference
        return reference

    def _distance(self, reference: _Reference, texts: list[str]) -> float:
        vectors = np.ascontiguousarray(self.encoder.encode(texts))
        similarity, _ = reference.index.search(vectors, 1)
        return float(np.mean(1.0 - similarity[:, 0]))


def drift_loop(monitor: DriftMonitor, interval: float) -> Periodic:
    """Every ``interval`` seconds in the background: the threshold controller (it tightens
    before agreement falls as far as the drift floor), drift checks, then auto-ramp."""

    async def check_and_ramp() -> None:
        await asyncio.to_thread(steer, monitor.engine, monitor.settings, monitor.metrics)
        await monitor.check_all()
        await asyncio.to_thread(ramp, monitor.engine, monitor.settings)

    return Periodic("drift-and-ramp", interval, check_and_ramp)
