"""The threshold controller: spend a live task's error budget, and no more.

The calibrated threshold is chosen offline, on held-out (and out-of-fold) predictions, with
a guarantee, so it is cautious. Once a version is live, audits (live student answers the
teacher is asked about again) and shadow answers at or above the threshold (the teacher
served them; the student would have) measure the agreement it really reaches on what it
serves. Every round (with the drift checks, before them) the controller reads the latest
``window`` of those scored answers of the live version, keeps the ones it would serve at
the current threshold, and bounds their agreement from below (one-sided 95%
Clopper-Pearson, see ``core.intervals``):

- below the target (over at least ``min_pairs`` answers): it **tightens at once**, to the
  loosest threshold at which the same evidence does reach the target with the guarantee;
- the latest 50, 100 or 200 served answers so bad that even their upper bound is under
  the target (a sudden drop, caught before it outweighs the window): it **tightens at
  once**, to the loosest threshold at which those answers agree at the target (on the
  estimate: they are too few for the bound);
- either way, when the evidence backs no stricter threshold: back to the calibrated
  one, then a step stricter each round;
- at or above the target by ``loosen_margin`` over at least ``min_pairs`` answers served
  since its last tightening (older ones may predate the student getting worse), and
  ``loosen_pairs`` new ones since its last move: it **loosens one small step** (the
  threshold's log-probability ``loosen_step`` further from 0), never below ``floor_factor``
  times the calibrated threshold (log-probabilities: 3x is the calibrated probability
  cubed);
- otherwise it holds.

A task whose admin set ``confidence_threshold`` is left alone: the admin's threshold wins
(``core.task_policy``). Drift step-down stays the last resort: it acts on window
agreement below the drift floor, far under the target the controller holds. Every move is
a ``threshold_moves`` row with its evidence, counted in
``stillroom_threshold_moves_total``; each round exports the threshold routing uses and the
realised agreement with its interval.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.intervals import interval, lower_bound, reaches, upper_bound
from core.metrics import Metrics
from core.settings import Settings
from core.tables import ShadowResult, StudentVersion, Task, ThresholdDirection, ThresholdMove
from core.task_policy import TaskPolicy, effective_policy
from core.transitions import lock_task

log = logging.getLogger("stillroom.router")

RECENT_MOVES = 20


@dataclass(frozen=True, slots=True)
class ControlRules:
    """How the controller moves a threshold."""

    window: int = 2000
    """Latest scored answers of the live version read each round."""
    min_pairs: int = 400
    """Served answers needed before a move on the whole window: fewer cannot tell 97%
    from 95% (before then the calibrated threshold holds, with its own guarantee)."""
    recent_sizes: tuple[int, ...] = (50, 100, 200)
    """The latest served answers checked on their own, so that a sudden drop is caught
    before it outweighs the window: tighten at once when even their upper bound is under
    the target."""
    loosen_pairs: int = 100
    """New served answers since the last move before loosening again."""
    loosen_margin: float = 0.0025
    """How far above the target the lower bound must be to loosen."""
    loosen_step: float = 0.25
    """Each step moves the threshold's log-probability this share further from 0."""
    floor_factor: float = 3.0
    """Never looser than this many times the calibrated threshold (log-probabilities)."""


@dataclass(frozen=True, slots=True)
class Scored:
    """One scored answer as the controller reads it."""

    kind: str  # shadow or audit
    agrees: bool
    confidence: float | None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """The scored answers served at a threshold, and the bound on their agreement."""

    pairs: int
    agreed: int
    lower_bound: float
    fresh: int  # of them, scored since the last move


@dataclass(frozen=True, slots=True)
class Move:
    direction: ThresholdDirection
    threshold: float
    reason: str


def served_at(scored: Sequence[Scored], threshold: float) -> list[Scored]:
    """The answers the student serves at ``threshold``: audits and shadow answers at or
    above it (an audit without a confidence was served, so it counts)."""
    return [
        s
        for s in scored
        if (s.confidence is None and s.kind == "audit")
        or (s.confidence is not None and s.confidence >= threshold)
    ]


def evidence(scored: Sequence[Scored], threshold: float, since: datetime | None = None) -> Evidence:
    served = served_at(scored, threshold)
    agreed = sum(s.agrees for s in served)
    fresh = sum(1 for s in served if since is None or (s.created_at and s.created_at > since))
    return Evidence(len(served), agreed, lower_bound(agreed, len(served)), fresh)


def decide(
    *,
    scored: Sequence[Scored],
    threshold: float,
    calibrated: float,
    target: float,
    rules: ControlRules,
    last_move_at: datetime | None = None,
    last_tighten_at: datetime | None = None,
) -> tuple[Move | None, Evidence]:
    """Where the threshold should go on ``scored`` (newest first), or None to hold."""
    seen = evidence(scored, threshold, since=last_move_at)
    served = served_at(scored, threshold)
    for size in rules.recent_sizes:
        recent = served[:size]
        agreed = sum(s.agrees for s in recent)
        if len(recent) == size and upper_bound(agreed, size) < target:
            figures = (
                f"{agreed} of the latest {size} served answers agreed, upper bound "
                f"{upper_bound(agreed, size):.2%}"
            )
            stricter = _estimated(served[: max(rules.recent_sizes)], target, size // 2)
            return _tighten(stricter, threshold, calibrated, target, rules, figures), seen
    if seen.pairs < rules.min_pairs:
        return None, seen
    figures = (
        f"{seen.agreed} of {seen.pairs} served answers agreed, lower bound {seen.lower_bound:.2%}"
    )
    if not reaches(seen.agreed, seen.pairs, target):
        stricter = _guaranteed(served, target, rules.min_pairs)
        return _tighten(stricter, threshold, calibrated, target, rules, figures), seen
    # Budget is judged on what was served since the last tightening: older answers may
    # come from before the student got worse.
    settled = [
        s
        for s in served
        if last_tighten_at is None or (s.created_at is not None and s.created_at > last_tighten_at)
    ]
    settled_bound = lower_bound(sum(s.agrees for s in settled), len(settled))
    floor = calibrated * rules.floor_factor
    looser = max(floor, threshold * (1.0 + rules.loosen_step))
    if (
        len(settled) >= rules.min_pairs
        and settled_bound >= target + rules.loosen_margin
        and seen.fresh >= rules.loosen_pairs
        and looser < threshold
        and not math.isclose(looser, threshold)
    ):
        return Move("loosen", looser, f"{figures}: budget left over the target {target:.1%}"), seen
    return None, seen


def _tighten(
    stricter: float | None,
    threshold: float,
    calibrated: float,
    target: float,
    rules: ControlRules,
    figures: str,
) -> Move | None:
    """To ``stricter`` (what the evidence backs); without one, back to the calibrated
    threshold, or a step stricter than both."""
    if stricter is None or stricter <= threshold:
        stricter = min(0.0, max(calibrated, threshold / (1.0 + rules.loosen_step)))
    if stricter <= threshold:
        return None
    return Move("tighten", stricter, f"{figures}: below the target {target:.1%}")


def _estimated(served: Sequence[Scored], target: float, min_pairs: int) -> float | None:
    """The loosest threshold at which the agreement of ``served`` (few, recent answers:
    too few for the bound) is at or above ``target``, over at least ``min_pairs``."""
    return _loosest(served, min_pairs, lambda agreed, count: agreed >= target * count)


def _guaranteed(served: Sequence[Scored], target: float, min_pairs: int) -> float | None:
    """The loosest threshold at which ``served`` reaches ``target`` with the guarantee
    (over at least ``min_pairs`` answers with a confidence)."""
    return _loosest(served, min_pairs, lambda agreed, count: reaches(agreed, count, target))


def _loosest(
    served: Sequence[Scored], min_pairs: int, good: Callable[[int, int], bool]
) -> float | None:
    known = sorted(
        ((s.confidence, s.agrees) for s in served if s.confidence is not None), reverse=True
    )
    chosen = None
    agreed = 0
    for count, (value, agrees) in enumerate(known, start=1):
        agreed += agrees
        if count < len(known) and known[count][0] == value:
            continue
        if count >= min_pairs and good(agreed, count):
            chosen = value
    return chosen


def steer(
    engine: Engine,
    settings: Settings,
    metrics: Metrics | None = None,
    rules: ControlRules | None = None,
) -> list[ThresholdMove]:
    """One round over every live task with a calibrated live version: move thresholds
    where the evidence says so, export the figures. Returns the moves made."""
    rules = rules or ControlRules()
    with Session(engine) as session:
        names = session.exec(
            select(Task.name).where(Task.mode == "live", col(Task.active_version_id).is_not(None))
        ).all()
    moves = []
    for name in names:
        move = _steer_task(engine, settings, metrics, rules, name)
        if move is not None:
            moves.append(move)
    return moves


def _steer_task(
    engine: Engine, settings: Settings, metrics: Metrics | None, rules: ControlRules, name: str
) -> ThresholdMove | None:
    with Session(engine) as session, session.begin():
        task = lock_task(session=session, name=name)
        if task is None or task.mode != "live" or task.active_version_id is None:
            return None
        version = session.get(StudentVersion, task.active_version_id)
        if version is None:
            return None
        policy = effective_policy(task, settings)
        threshold = policy.threshold_for(version)
        scored = _scored(session, version.id, rules.window)
        if threshold is None or version.confidence_threshold is None:
            return None
        last = _last_move(session, name, version.id)
        tightened = _last_move(session, name, version.id, direction="tighten")
        move, seen = decide(
            scored=scored,
            threshold=threshold,
            calibrated=version.confidence_threshold,
            target=policy.target_agreement,
            rules=rules,
            last_move_at=last.created_at if last is not None else None,
            last_tighten_at=tightened.created_at if tightened is not None else None,
        )
        if policy.overridden:
            move = None
        row = None
        if move is not None:
            row = _record(session, task, version, policy, threshold, move, seen)
            threshold = move.threshold
    if metrics is not None:
        _export(metrics, name, threshold, seen, row)
    return row


def _record(
    session: Session,
    task: Task,
    version: StudentVersion,
    policy: TaskPolicy,
    threshold: float,
    move: Move,
    seen: Evidence,
) -> ThresholdMove:
    row = ThresholdMove(
        id=uuid.uuid4().hex,
        task=task.name,
        version_id=version.id,
        direction=move.direction,
        from_threshold=threshold,
        to_threshold=move.threshold,
        pairs=seen.pairs,
        agreed=seen.agreed,
        lower_bound=seen.lower_bound,
        target=policy.target_agreement,
        reason=move.reason,
    )
    task.controlled_threshold = move.threshold
    task.controlled_version_id = version.id
    session.add(task)
    session.add(row)
    session.flush()
    session.expunge(row)
    log.info(
        "threshold of %s %ss from %.4f to %.4f (%s)",
        task.name,
        move.direction,
        threshold,
        move.threshold,
        move.reason,
    )
    return row


def _export(
    metrics: Metrics, task: str, threshold: float, seen: Evidence, move: ThresholdMove | None
) -> None:
    metrics.prepare_threshold_control(task)
    metrics.confidence_threshold.labels(task=task).set(threshold)
    if move is not None:
        metrics.threshold_moves.labels(task=task, direction=move.direction).inc()
    if seen.pairs:
        spread = interval(seen.agreed, seen.pairs)
        metrics.realised_agreement.labels(task=task, figure="estimate").set(spread.estimate or 0.0)
        metrics.realised_agreement.labels(task=task, figure="low").set(spread.low)
        metrics.realised_agreement.labels(task=task, figure="high").set(spread.high)
        metrics.realised_agreement.labels(task=task, figure="lower_bound").set(seen.lower_bound)


def _scored(session: Session, version_id: str, window: int) -> list[Scored]:
    rows = session.exec(
        select(
            ShadowResult.kind, ShadowResult.agrees, ShadowResult.confidence, ShadowResult.created_at
        )
        # Feedback is left out: apps rate the answers they noticed, no random sample, and
        # the bound's guarantee holds only for one (drift counts feedback; this does not).
        .where(ShadowResult.version_id == version_id, ShadowResult.kind != "feedback")
        .order_by(col(ShadowResult.created_at).desc())
        .limit(window)
    ).all()
    return [Scored(kind, agrees, confidence, created) for kind, agrees, confidence, created in rows]


def _last_move(
    session: Session, task: str, version_id: str, direction: ThresholdDirection | None = None
) -> ThresholdMove | None:
    query = select(ThresholdMove).where(
        ThresholdMove.task == task, ThresholdMove.version_id == version_id
    )
    if direction is not None:
        query = query.where(ThresholdMove.direction == direction)
    return session.exec(query.order_by(col(ThresholdMove.created_at).desc())).first()


def recent_moves(
    *, session: Session, task: str, limit: int = RECENT_MOVES
) -> Sequence[ThresholdMove]:
    """The task's latest threshold moves, newest first."""
    return session.exec(
        select(ThresholdMove)
        .where(ThresholdMove.task == task)
        .order_by(col(ThresholdMove.created_at).desc(), col(ThresholdMove.id))
        .limit(limit)
    ).all()
