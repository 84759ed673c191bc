"""What the admin API and ``stillroom tasks`` show about a task: traffic, who served it,
cost and savings, the live version's offline and live agreement, the latest drift check."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from core.settings import Settings
from core.tables import DriftReport, Exchange, ShadowResult, StudentVersion, Task


def version_public(version: StudentVersion) -> dict[str, Any]:
    return version.model_dump(mode="json")


def task_summary(session: Session, task: Task, settings: Settings) -> dict[str, Any]:
    statuses = dict(
        session.exec(
            select(Exchange.status, func.count())
            .where(Exchange.task == task.name)
            .group_by(col(Exchange.status))
        ).all()
    )
    served = dict(
        session.exec(
            select(Exchange.served_by, func.count())
            .where(Exchange.task == task.name)
            .group_by(col(Exchange.served_by))
        ).all()
    )
    cost = session.exec(
        select(func.coalesce(func.sum(Exchange.cost_usd), 0.0)).where(Exchange.task == task.name)
    ).one()
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
        "cost_usd": float(cost or 0.0),
        "savings_usd": _savings(session, task.name, settings),
        "active_version": version_public(active) if active else None,
        "live_agreement": _live_agreement(session, active, settings.drift_window)
        if active
        else None,
        "drift": _latest_drift(session, task.name),
        "created_at": task.created_at.isoformat() if task.created_at else None,
    }


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
        .where(Exchange.task == task, Exchange.served_by == "student")
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


def _latest_drift(session: Session, task: str) -> dict[str, Any] | None:
    report = session.exec(
        select(DriftReport)
        .where(DriftReport.task == task)
        .order_by(col(DriftReport.created_at).desc())
    ).first()
    return report.model_dump(mode="json") if report else None
