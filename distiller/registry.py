"""The registry of student versions and training runs, and the publish gate.

A candidate is published only if, at its calibrated confidence threshold, it agrees with
the teacher at the task's target on a large enough share of held-out traffic, and that
share is no smaller than the live version's. Publishing loads a LoRA adapter into every
replica of the student server and checks each answers a held-out prompt (a replica that is
down is passed over if another has it, and gets it from the adapter sync; a classifier's
head is in the store, where every proxy loads it from: it is checked to load), then
switches the task's active version in one transaction (an auto-ramp task goes back to
shadow, through ``core.transitions``). The previous version stays loadable for rollback.
An operator may publish any version of a task, the gate and the tournament aside.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.classifier import Head
from core.errors import InvalidRequestError, NotFoundError
from core.evaluation import TournamentFigures, read_evaluation
from core.extractor import Extractor
from core.tables import (
    Exchange,
    StudentHead,
    StudentVersion,
    Task,
    TrainingRun,
    TransitionCause,
    VersionState,
)
from core.task_policy import TaskPolicy
from core.tenants import split_task_key
from core.transitions import change_mode, lock_task
from distiller.backends import StudentBackendError, StudentReplicas, SyncReport


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> datetime:
    return datetime.now(UTC)


def list_versions(*, session: Session, task: str) -> Sequence[StudentVersion]:
    return session.exec(
        select(StudentVersion)
        .where(StudentVersion.task == task)
        .order_by(col(StudentVersion.number))
    ).all()


def active_version(*, session: Session, task: str) -> StudentVersion | None:
    row = session.get(Task, task)
    if row is None or row.active_version_id is None:
        return None
    return session.get(StudentVersion, row.active_version_id)


def next_version_number(*, session: Session, task: str) -> int:
    highest = session.exec(
        select(sa.func.max(StudentVersion.number)).where(StudentVersion.task == task)
    ).one()
    return int(highest or 0) + 1


def gate_verdict(
    candidate: StudentVersion, live: StudentVersion | None, policy: TaskPolicy
) -> str | None:
    """None when the candidate (calibrated at the task's target) may be published under
    the task's ``policy``, else why not."""
    share = candidate.retained_share or 0.0
    target = policy.target_agreement
    if candidate.confidence_threshold is None or share <= 0:
        return (
            f"no confidence threshold reaches {target:.0%} agreement "
            f"(held-out agreement {candidate.agreement or 0:.1%})"
        )
    if share < policy.publish_min_share:
        return (
            f"only {share:.0%} of held-out traffic reaches {target:.0%} "
            f"agreement; at least {policy.publish_min_share:.0%} is needed"
        )
    live_share = (live.retained_share or 0.0) if live is not None else 0.0
    if live is not None and share < live_share:
        return (
            f"serves {share:.0%} of traffic at target, less than the live version "
            f"v{live.number} ({live_share:.0%})"
        )
    return None


async def publish(
    *,
    engine: Engine,
    backend: StudentReplicas,
    version: StudentVersion,
    probe_messages: list[dict[str, Any]],
) -> StudentVersion:
    """Load, health-check, then activate ``version`` (the live one is retired). On a
    backend failure (a replica refused it, or none holds it) the version is rejected and
    the live version is untouched."""
    try:
        if version.kind == "classifier":
            check_head(engine=engine, version=version)
        elif version.kind == "extractor":
            check_extractor(engine=engine, version=version)
        else:
            await backend.publish(version.adapter_name, version.adapter_path, probe_messages)
    except (StudentBackendError, ValueError) as exc:
        return _set_state(engine, version.id, "rejected", f"failed to load or answer: {exc}")
    with Session(engine) as session, session.begin():
        row = session.get(StudentVersion, version.id)
        task = lock_task(session=session, name=version.task)
        assert row is not None
        if task is None:
            task = Task(name=version.task, tenant=split_task_key(version.task)[1])
            session.add(task)
        previous = None
        if task.active_version_id and task.active_version_id != row.id:
            previous = session.get(StudentVersion, task.active_version_id)
            if previous is not None:
                previous.state = "retired"
        row.state = "published"
        row.reason = None
        row.published_at = now()
        task.active_version_id = row.id
        replaced = f" in place of v{previous.number}" if previous is not None else ""
        _restart_ramp(session, task, "publish", f"v{row.number} published{replaced}")
        session.flush()
        session.expunge(row)
    return row


def _restart_ramp(session: Session, task: Task, cause: TransitionCause, what: str) -> None:
    """An auto-ramp task's newly active version earns its traffic again from shadow."""
    if task.auto_ramp:
        change_mode(
            session=session,
            task=task,
            cause=cause,
            reason=f"{what}; auto-ramp starts it again from shadow",
            mode="shadow",
            cutover_percent=0.0,
        )


async def rollback(*, engine: Engine, backend: StudentReplicas, task: str) -> StudentVersion:
    """Re-activate the version published before the live one (an auto-ramp task shadows
    it again, as it would a new version)."""
    with Session(engine) as session:
        live = active_version(session=session, task=task)
        if live is None:
            raise InvalidRequestError(f"task {task!r} has no live student version to roll back")
        earlier = session.exec(
            select(StudentVersion)
            .where(
                StudentVersion.task == task,
                StudentVersion.state == "retired",
                col(StudentVersion.published_at).is_not(None),
                StudentVersion.number < live.number,
            )
            .order_by(col(StudentVersion.number).desc())
        ).first()
        if earlier is None:
            raise InvalidRequestError(
                f"task {task!r} has no earlier published version than v{live.number}"
            )
        session.expunge_all()
    try:
        await ensure_loaded(backend, earlier)
    except StudentBackendError as exc:
        raise InvalidRequestError(
            f"cannot roll back to v{earlier.number}: the student server refused its adapter: {exc}"
        ) from exc
    with Session(engine) as session, session.begin():
        row = lock_task(session=session, name=task)
        current = session.get(StudentVersion, live.id)
        previous = session.get(StudentVersion, earlier.id)
        assert row is not None
        assert current is not None
        assert previous is not None
        current.state = "retired"
        current.reason = "rolled back"
        previous.state = "published"
        previous.reason = None
        row.active_version_id = previous.id
        what = f"rolled back from v{current.number} to v{previous.number}"
        _restart_ramp(session, row, "rollback", what)
        session.flush()
        session.expunge(previous)
    return previous


def check_head(*, engine: Engine, version: StudentVersion) -> Head:
    """A classifier version's head, read back from the store; ValueError if it is missing
    or unreadable."""
    with Session(engine) as session:
        row = session.get(StudentHead, version.id)
        data = row.data if row is not None else None
    if data is None:
        raise ValueError(f"v{version.number} has no classifier head in the store")
    head = Head.from_bytes(data)
    if not head.answers or not all(answer.strip() for answer in head.answers):
        raise ValueError(f"v{version.number}'s classifier head has an empty answer")
    return head


def check_extractor(*, engine: Engine, version: StudentVersion) -> dict[str, Any]:
    """An extractor version's description, read back from the store (every proxy replica
    loads the model from there); ValueError if it is missing or unreadable."""
    with Session(engine) as session:
        row = session.get(StudentHead, version.id)
        data = row.data if row is not None else None
    if data is None:
        raise ValueError(f"v{version.number} has no extractor in the store")
    meta = Extractor.read_meta(data)
    if not meta.get("spec") or not meta.get("layout"):
        raise ValueError(f"v{version.number}'s extractor has no fields or layout")
    return meta


async def ensure_loaded(backend: StudentReplicas, version: StudentVersion) -> None:
    """Load the version's adapter into every replica that lacks it (a classifier or an
    extractor needs nothing of the student server)."""
    if version.kind == "lora":
        await backend.ensure_loaded(version.adapter_name, version.adapter_path)


async def sync_adapters(*, engine: Engine, backend: StudentReplicas) -> SyncReport:
    """Load the adapter of every task's active version into each replica that lacks it (it
    restarted, or is new)."""
    with Session(engine) as session:
        active = session.exec(
            select(StudentVersion)
            .join(Task, col(Task.active_version_id) == StudentVersion.id)
            .where(StudentVersion.kind == "lora")
        ).all()
        adapters = {version.adapter_name: version.adapter_path for version in active}
    return await backend.sync(adapters)


def _set_state(
    engine: Engine, version_id: str, state: VersionState, reason: str | None
) -> StudentVersion:
    with Session(engine) as session, session.begin():
        row = session.get(StudentVersion, version_id)
        assert row is not None
        row.state = state
        row.reason = reason
        session.flush()
        session.expunge(row)
    return row


def reject(*, engine: Engine, version: StudentVersion, reason: str) -> StudentVersion:
    return _set_state(engine, version.id, "rejected", reason)


def note_tournament(
    *, engine: Engine, versions: Sequence[StudentVersion], figures: TournamentFigures
) -> None:
    """Keep the tournament's figures in the evaluation of every version that took part."""
    with Session(engine) as session, session.begin():
        for version in versions:
            row = session.get(StudentVersion, version.id)
            if row is not None:
                evaluation = read_evaluation(row).model_copy(update={"tournament": figures})
                row.evaluation = evaluation.document()


def find_version(*, session: Session, task: str, version: str) -> StudentVersion:
    """A task's version by number (``3`` or ``v3``) or id."""
    number = version.lower().removeprefix("v")
    found = None
    if number.isdigit():
        found = session.exec(
            select(StudentVersion).where(
                StudentVersion.task == task, StudentVersion.number == int(number)
            )
        ).first()
    if found is None:
        row = session.get(StudentVersion, version)
        found = row if row is not None and row.task == task else None
    if found is None:
        raise NotFoundError(f"task {task!r} has no version {version!r}", param="version")
    return found


async def publish_chosen(
    *, engine: Engine, backend: StudentReplicas, task: str, version: str
) -> StudentVersion:
    """An operator's choice: publish ``version`` of ``task`` whatever the gate or the
    tournament said (it is loaded and health-checked like any other)."""
    with Session(engine) as session:
        chosen = find_version(session=session, task=task, version=version)
        if chosen.state == "published":
            raise InvalidRequestError(f"v{chosen.number} of {task!r} is already live")
        probe = _probe_messages(session, chosen)
        session.expunge(chosen)
    published = await publish(engine=engine, backend=backend, version=chosen, probe_messages=probe)
    if published.state != "published":
        raise InvalidRequestError(f"v{chosen.number} could not be published: {published.reason}")
    return published


def _probe_messages(session: Session, version: StudentVersion) -> list[dict[str, Any]]:
    """A held-out prompt of the version's evaluation, to health-check it with."""
    for exchange_id, _agrees in read_evaluation(version).heldout:
        exchange = session.get(Exchange, exchange_id)
        if exchange is not None and exchange.request.get("messages"):
            return list(exchange.request["messages"])
    return [{"role": "user", "content": "hello"}]


def claim_run(*, engine: Engine, run_id: str) -> bool:
    """Atomically move a queued run to running; False if another process took it."""
    with engine.begin() as connection:
        result = connection.execute(
            sa.update(TrainingRun)
            .where(col(TrainingRun.id) == run_id, col(TrainingRun.state) == "queued")
            .values(state="running", started_at=now(), updated_at=now())
        )
    return bool(result.rowcount == 1)


def update_run(*, engine: Engine, run_id: str, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(TrainingRun)
            .where(col(TrainingRun.id) == run_id)
            .values(updated_at=now(), **values)
        )


def get_run(*, session: Session, task: str, run_id: str) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None or run.task != task:
        raise NotFoundError(f"no training run {run_id!r} for task {task!r}")
    return run


def list_runs(*, session: Session, task: str) -> Sequence[TrainingRun]:
    return session.exec(
        select(TrainingRun).where(TrainingRun.task == task).order_by(col(TrainingRun.created_at))
    ).all()
