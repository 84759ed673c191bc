"""What the admin API and ``stillroom tasks`` show about a task: traffic, who served it,
cost and savings, the live version's offline and live agreement, the latest drift check,
the threshold it answers at and the controller's moves.

Live agreement is an estimate from a sample (shadow and audit pairs): each comes with its
two-sided 95% Clopper-Pearson interval (``core.intervals``), and the savings with the
agreement they were bought at."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from core.intervals import interval
from core.settings import Settings
from core.tables import (
    DriftReport,
    Exchange,
    ShadowResult,
    StudentVersion,
    Task,
    TaskTransition,
    ThresholdMove,
)
from core.task_policy import effective_policy
from core.tenants import split_task_key
from core.transitions import recent_transitions
from router.gates import served_agreement
from router.threshold_control import recent_moves


def version_public(version: StudentVersion) -> dict[str, Any]:
    return version.model_dump(mode="json")


def transition_public(transition: TaskTransition) -> dict[str, Any]:
    return transition.model_dump(mode="json", exclude={"task"})


def move_public(move: ThresholdMove) -> dict[str, Any]:
    return move.model_dump(mode="json", exclude={"task"})


def threshold_moves(session: Session, task: str) -> list[dict[str, Any]]:
    """The controller's latest moves of the task's threshold, newest first."""
    return [move_public(m) for m in recent_moves(session=session, task=task)]


def feedback_counts(session: Session, task: str) -> dict[str, Any]:
    """The task's answers rated good or bad (and corrected) by apps, and those its
    clients made suspect by asking again (``proxy.admin.feedback``,
    ``proxy.gateway.retries``)."""
    # A JSON column keeps None as JSON null, not SQL NULL: read it as text to tell.
    corrected = func.coalesce(sa.cast(col(Exchange.corrected_response), sa.Text), "null") != "null"
    rows = session.exec(
        select(Exchange.feedback, Exchange.suspect, corrected, func.count())
        .where(
            Exchange.task == task,
            col(Exchange.feedback).is_not(None) | col(Exchange.suspect).is_not(None),
        )
        .group_by(col(Exchange.feedback), col(Exchange.suspect), corrected)
    ).all()
    counts: dict[str, Any] = {"good": 0, "bad": 0, "corrected": 0, "retry": 0, "reask": 0}
    for rating, suspect, was_corrected, count in rows:
        for key in (rating, suspect):
            if key in counts:
                counts[key] += count
        if was_corrected:
            counts["corrected"] += count
    return counts


def task_transitions(session: Session, task: str) -> list[dict[str, Any]]:
    """The task's latest changes of mode and cutover, newest first."""
    return [transition_public(t) for t in recent_transitions(session=session, task=task)]


def task_summary(session: Session, task: Task, settings: Settings) -> dict[str, Any]:
    """``exchanges`` and ``served_by`` count the clients' requests only; ``cost_usd`` is
    everything the task cost, of which ``audits`` shows the teacher calls made to audit
    the student (exchanges, not requests)."""
    requests = Exchange.task == task.name, Exchange.origin == "client"
    statuses = dict(
        session.exec(
            select(Exchange.status, func.count()).where(*requests).group_by(col(Exchange.status))
        ).all()
    )
    served = dict(
        session.exec(
            select(Exchange.served_by, func.count())
            .where(*requests)
            .group_by(col(Exchange.served_by))
        ).all()
    )
    spend = _spend_by_origin(session, task.name)
    audits, audit_cost = spend.get("audit", (0, 0.0))
    active = session.get(StudentVersion, task.active_version_id) if task.active_version_id else None
    live = _live_agreement(session, task, active, settings) if active else None
    savings = _savings(session, task.name, settings)
    name, tenant = split_task_key(task.name)
    return {
        "name": name,  # as clients name it (X-Stillroom-Task); ``key`` names it in the store
        "key": task.name,
        "tenant": tenant,
        "derived": task.derived,
        "teacher_model": task.teacher_model,
        "mode": task.mode,
        "cutover_percent": task.cutover_percent,
        "shadow_percent": task.shadow_percent,
        "audit_percent": task.audit_percent,
        "confidence_threshold": task.confidence_threshold,
        "target_agreement": task.target_agreement,
        "auto_ramp": task.auto_ramp,
        "cache_seconds": task.cache_seconds,
        "retention_days": task.retention_days,  # its own; null: the setting's
        "retention": _retention(task, settings),
        "shape": task.shape,
        "label_count": task.label_count,
        "field_kinds": task.field_kinds,
        "exchanges": {"total": sum(statuses.values()), **statuses},
        "served_by": served,
        "cost_usd": sum(cost for _, cost in spend.values()),
        "audits": {"exchanges": audits, "cost_usd": audit_cost},
        "savings_usd": savings,
        "cache": _cache(session, task, settings, served),
        "savings": _savings_at_agreement(savings, served, live),
        "threshold": _threshold(task, active, settings),
        "active_version": version_public(active) if active else None,
        "live_agreement": live,
        "drift": _latest_drift(session, task.name),
        "last_transition": _latest_transition(session, task.name),
        "created_at": task.created_at.isoformat() if task.created_at else None,
    }


def _spend_by_origin(session: Session, task: str) -> dict[str, tuple[int, float]]:
    """Exchanges and their cost, by origin (client, audit, import)."""
    rows = session.exec(
        select(Exchange.origin, func.count(), func.coalesce(func.sum(Exchange.cost_usd), 0.0))
        .where(Exchange.task == task)
        .group_by(col(Exchange.origin))
    ).all()
    return {origin: (int(count), float(cost or 0.0)) for origin, count, cost in rows}


def _retention(task: Task, settings: Settings) -> dict[str, Any]:
    """How long the task's exchanges are kept (``days`` null: for ever), and whose rule
    that is: the task's own, or the setting's."""
    if task.retention_days is not None:
        return {"days": task.retention_days, "source": "task"}
    return {"days": settings.retention_days, "source": "setting"}


def _cache(
    session: Session, task: Task, settings: Settings, served: dict[str, int]
) -> dict[str, Any]:
    """The task's effective cache window (its own, else the setting's), the requests the
    cache answered and the teacher's price of those answers, saved."""
    return {
        "window_seconds": effective_policy(task, settings).cache_seconds,
        "exchanges": served.get("cache", 0),
        "savings_usd": _savings(session, task.name, settings, served_by="cache"),
    }


def _savings(session: Session, task: str, settings: Settings, served_by: str = "student") -> float:
    """What the teacher would have cost for what the student served, minus what the
    student cost (both from the price table, on the student's token counts); with
    ``served_by="cache"``, for what the cache served (which cost nothing)."""
    rows = session.exec(
        select(
            Exchange.model,
            func.coalesce(func.sum(Exchange.prompt_tokens), 0),
            func.coalesce(func.sum(Exchange.completion_tokens), 0),
            func.coalesce(func.sum(Exchange.cost_usd), 0.0),
        )
        .where(Exchange.task == task, Exchange.origin == "client", Exchange.served_by == served_by)
        .group_by(col(Exchange.model))
    ).all()
    total = 0.0
    for model, prompt_tokens, completion_tokens, student_cost in rows:
        price = settings.price_of(model)
        if price is not None:
            counterfactual = price.cost(int(prompt_tokens or 0), int(completion_tokens or 0))
            total += counterfactual - float(student_cost or 0.0)
    return total


def _threshold(task: Task, version: StudentVersion | None, settings: Settings) -> dict[str, Any]:
    """The threshold routing uses for the live version, and whose it is: the admin's
    (``confidence_threshold`` on the task wins), the controller's, or the calibrated one."""
    policy = effective_policy(task, settings)
    effective = policy.threshold_for(version)
    calibrated = version.confidence_threshold if version is not None else None
    if policy.overridden:
        source = "admin"
    elif version is not None and effective is not None and effective != calibrated:
        source = "controller"
    else:
        source = "calibrated"
    return {"effective": effective, "source": source, "calibrated": calibrated}


def _live_agreement(
    session: Session, task: Task, version: StudentVersion, settings: Settings
) -> dict[str, Any]:
    """Agreement of the latest shadow and audit pairs of the live version, each with its
    95% interval; ``served``: of those, the ones the student serves at its threshold."""
    latest = (
        select(ShadowResult.kind, ShadowResult.agrees, ShadowResult.confidence)
        .where(ShadowResult.version_id == version.id)
        .order_by(col(ShadowResult.created_at).desc())
        .limit(settings.drift_window)
    )
    figures: dict[str, Any] = {}
    for kind in ("shadow", "audit"):
        agreed = session.exec(latest.where(ShadowResult.kind == kind)).all()
        figures[kind] = interval(sum(a for _, a, _ in agreed), len(agreed)).public()
    rows = session.exec(latest).all()
    threshold = effective_policy(task, settings).threshold_for(version)
    agreement, pairs = served_agreement(list(rows), threshold)
    agreed_served = round((agreement or 0.0) * pairs)
    figures["served"] = interval(agreed_served, pairs).public()
    return figures


def _savings_at_agreement(
    savings: float, served: dict[str, int], live: dict[str, Any] | None
) -> dict[str, Any]:
    """What was saved, with the share the student served and the agreement (with its
    interval) that share was served at: a saving holds only at the agreement it came with."""
    requests = sum(served.values())
    figures: dict[str, Any] = {
        "usd": savings,
        "student_share": served.get("student", 0) / requests if requests else None,
        "agreement": None,
    }
    if live is not None:
        figures["agreement"] = live["audit"] if live["audit"]["pairs"] else live["served"]
    return figures


def _latest_transition(session: Session, task: str) -> dict[str, Any] | None:
    latest = recent_transitions(session=session, task=task, limit=1)
    return transition_public(latest[0]) if latest else None


def _latest_drift(session: Session, task: str) -> dict[str, Any] | None:
    report = session.exec(
        select(DriftReport)
        .where(DriftReport.task == task)
        .order_by(col(DriftReport.created_at).desc())
    ).first()
    return report.model_dump(mode="json") if report else None
