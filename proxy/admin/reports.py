"""What the admin API and ``stillroom tasks`` show about a task: traffic, who served it,
cost and savings, the live version's offline and live agreement, the latest drift check."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from core.settings import Settings
from core.tables import DriftReport, Exchange, ShadowResult, StudentVersion, Task, TaskTransition
from core.transitions import recent_transitions


def version_public(version: StudentVersion) -> dict[str, Any]:
    return version.model_dump(mode="json")


def transition_public(transition: TaskTransition) -> dict[str, Any]:
    return transition.model_dump(mode="json", exclude={"task"})


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
    return {
        "name": task.name,
        "derived": task.derived,
        "teacher_model": task.teacher_model,
        "mode": task.mode,
        "cutover_percent": task.cutover_percent,
        "shadow_percent": task.shadow_percent,
        "audit_percent": task.audit_percent,
        "confidence_threshold": task.confidence_threshold,
        "target_agreement": task.target_agreement,
        "auto_ramp": task.auto_ramp,
        "shape": task.shape,
        "label_count": task.label_count,
        "exchanges": {"total": sum(statuses.values()), **statuses},
        "served_by": served,
        "cost_usd": sum(cost for _, cost in spend.values()),
        "audits": {"exchanges": audits, "cost_usd": audit_cost},
        "savings_usd": _savings(session, task.name, settings),
        "active_version": version_public(active) if active else None,
        "live_agreement": _live_agreement(session, active, settings.drift_window)
        if active
        else None,
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


def _savings(session: Session, task: str, settings: Settings) -> float:
    """What the teacher would have cost for what the student served, minus what the
    student cost (both from the price table, on the student's token counts)."""
    rows = session.exec(
        select(
            Exchange.model,
            func.coalesce(func.sum(Exchange.prompt_tokens), 0),
            func.coalesce(func.sum(Exchange.completion_tokens), 0),
            func.coalesce(func.sum(Exchange.cost_usd), 0.0),
        )
        .where(Exchange.task == task, Exchange.origin == "client", Exchange.served_by == "student")
        .group_by(col(Exchange.model))
    ).all()
    total = 0.0
    for model, prompt_tokens, completion_tokens, student_cost in rows:
        price = settings.price_of(model)
        if price is not None:
            counterfactual = price.cost(int(prompt_tokens or 0), int(completion_tokens or 0))
            total += counterfactual - float(student_cost or 0.0)
    return total


def _live_agreement(session: Session, version: StudentVersion, window: int) -> dict[str, Any]:
    """Agreement of the latest shadow and audit pairs of the live version."""
    figures: dict[str, Any] = {}
    for kind in ("shadow", "audit"):
        agreed = session.exec(
            select(ShadowResult.agrees)
            .where(ShadowResult.version_id == version.id, ShadowResult.kind == kind)
            .order_by(col(ShadowResult.created_at).desc())
            .limit(window)
        ).all()
        figures[kind] = {
            "pairs": len(agreed),
            "agreement": sum(agreed) / len(agreed) if agreed else None,
        }
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
