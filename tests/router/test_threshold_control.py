"""The threshold controller: audits and served shadow answers steer a live task's
confidence threshold, loosening in small steps while there is budget left and tightening
at once when there is not, within bounds, each move kept with its evidence."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.metrics import Metrics
from core.settings import Settings
from core.store import create_store_engine, create_tables
from core.tables import ShadowResult, StudentVersion, Task, ThresholdMove
from core.task_policy import effective_policy
from router.threshold_control import ControlRules, Scored, decide, steer

VERSION = "v" * 32
CALIBRATED = -0.2
SETTINGS = Settings(target_agreement=0.95)
RULES = ControlRules(min_pairs=100, loosen_pairs=100)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    with Session(engine) as session:
        session.add(
            StudentVersion(
                id=VERSION,
                task="t",
                number=1,
                state="published",
                base_model="base",
                adapter_name="t-v1",
                adapter_path="/adapters/t/v1",
                confidence_threshold=CALIBRATED,
            )
        )
        session.add(Task(name="t", mode="live", cutover_percent=100.0, active_version_id=VERSION))
        session.commit()
    yield engine
    engine.dispose()


def audit(engine: Engine, count: int, *, agree: bool = True, confidence: float = -0.05) -> None:
    with Session(engine) as session:
        for _ in range(count):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task="t",
                    version_id=VERSION,
                    kind="audit",
                    agrees=agree,
                    confidence=confidence,
                    score=1.0 if agree else 0.0,
                    student_answer="a",
                    teacher_answer="a",
                )
            )
        session.commit()


def threshold(engine: Engine) -> float | None:
    with Session(engine) as session:
        task = session.get(Task, "t")
        version = session.get(StudentVersion, VERSION)
        return effective_policy(task, SETTINGS).threshold_for(version)


def moves(engine: Engine) -> list[ThresholdMove]:
    with Session(engine) as session:
        return list(session.exec(select(ThresholdMove).order_by(col(ThresholdMove.created_at))))


def set_task(engine: Engine, **values: object) -> None:
    with Session(engine) as session:
        task = session.get(Task, "t")
        assert task is not None
        for name, value in values.items():
            setattr(task, name, value)
        session.add(task)
        session.commit()


def test_budget_left_loosens_the_threshold_one_small_step(engine: Engine) -> None:
    audit(engine, 300)
    [move] = steer(engine, SETTINGS, rules=RULES)
    assert move.direction == "loosen"
    assert move.from_threshold == CALIBRATED
    assert move.to_threshold == pytest.approx(CALIBRATED * 1.25)
    assert threshold(engine) == pytest.approx(CALIBRATED * 1.25)


def test_loosening_waits_for_new_evidence_after_each_move(engine: Engine) -> None:
    audit(engine, 300)
    assert len(steer(engine, SETTINGS, rules=RULES)) == 1
    assert steer(engine, SETTINGS, rules=RULES) == [], "no answer served since the move"
    audit(engine, 100, confidence=CALIBRATED * 1.2)
    [second] = steer(engine, SETTINGS, rules=RULES)
    assert second.direction == "loosen"
    assert second.to_threshold == pytest.approx(CALIBRATED * 1.25**2)


def test_agreement_below_the_target_tightens_at_once(engine: Engine) -> None:
    set_task(engine, controlled_threshold=-0.4, controlled_version_id=VERSION)
    audit(engine, 300, confidence=-0.05)  # sure answers: all right
    audit(engine, 100, agree=False, confidence=-0.3)  # the loosened band: all wrong
    [move] = steer(engine, SETTINGS, rules=RULES)
    assert move.direction == "tighten"
    assert move.to_threshold == pytest.approx(-0.05), "the loosest threshold the evidence backs"
    assert (move.pairs, move.agreed) == (400, 300)
    assert move.lower_bound < 0.95
    assert threshold(engine) == pytest.approx(-0.05)
    assert steer(engine, SETTINGS, rules=RULES) == [], "held there: the evidence reaches 95%"


def test_without_a_threshold_the_evidence_backs_it_goes_back_to_the_calibrated_one(
    engine: Engine,
) -> None:
    set_task(engine, controlled_threshold=-0.4, controlled_version_id=VERSION)
    audit(engine, 150, confidence=-0.3)
    audit(engine, 50, agree=False, confidence=-0.3)
    [move] = steer(engine, SETTINGS, rules=RULES)
    assert (move.direction, move.to_threshold) == ("tighten", CALIBRATED)


def test_a_sudden_drop_in_the_latest_answers_tightens_before_it_outweighs_the_window(
    engine: Engine,
) -> None:
    audit(engine, 1500)
    audit(engine, 200, agree=False)  # newest: the student got worse
    [move] = steer(engine, SETTINGS, rules=ControlRules())
    assert move.direction == "tighten"
    assert "0 of the latest 50 served answers agreed" in move.reason
    assert move.pairs == 1700
    assert move.lower_bound > 0.85, "the window alone would not have moved yet"


def test_too_few_served_answers_move_nothing(engine: Engine) -> None:
    audit(engine, 3, agree=False)
    audit(engine, 57)
    assert steer(engine, SETTINGS, rules=RULES) == []
    assert threshold(engine) == CALIBRATED


def test_loosening_stops_at_its_floor() -> None:
    scored = [Scored("audit", True, -0.01)] * 1000
    move, _ = decide(
        scored=scored, threshold=-0.55, calibrated=CALIBRATED, target=0.95, rules=RULES
    )
    assert move is not None
    assert move.threshold == pytest.approx(CALIBRATED * RULES.floor_factor)
    held, _ = decide(scored=scored, threshold=-0.6, calibrated=CALIBRATED, target=0.95, rules=RULES)
    assert held is None


def test_tightening_never_goes_past_zero() -> None:
    scored = [Scored("audit", False, None)] * 200
    move, _ = decide(scored=scored, threshold=-0.001, calibrated=-0.001, target=0.95, rules=RULES)
    assert move is not None
    assert -0.001 < move.threshold <= 0.0


def test_shadow_answers_below_the_threshold_are_no_evidence(engine: Engine) -> None:
    audit(engine, 300)
    with Session(engine) as session:
        for _ in range(200):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task="t",
                    version_id=VERSION,
                    kind="shadow",
                    agrees=False,
                    confidence=CALIBRATED - 1,
                    score=0.0,
                    student_answer="a",
                    teacher_answer="b",
                )
            )
        session.commit()
    [move] = steer(engine, SETTINGS, rules=RULES)
    assert move.direction == "loosen"
    assert move.pairs == 300


def test_an_admins_threshold_wins_and_the_controller_leaves_it(engine: Engine) -> None:
    set_task(engine, confidence_threshold=-0.1)
    audit(engine, 300)
    assert steer(engine, SETTINGS, rules=RULES) == []
    assert threshold(engine) == -0.1
    assert moves(engine) == []


def test_a_task_not_live_is_not_steered(engine: Engine) -> None:
    set_task(engine, mode="shadow")
    audit(engine, 300)
    assert steer(engine, SETTINGS, rules=RULES) == []


def test_every_move_is_kept_with_its_evidence_and_counted(engine: Engine) -> None:
    metrics = Metrics(CollectorRegistry())
    audit(engine, 300)
    steer(engine, SETTINGS, metrics, rules=RULES)
    [move] = moves(engine)
    assert (move.task, move.version_id, move.direction) == ("t", VERSION, "loosen")
    assert (move.pairs, move.agreed, move.target) == (300, 300, 0.95)
    assert move.lower_bound == pytest.approx(0.05 ** (1 / 300))
    assert "300 of 300 served answers agreed" in move.reason
    sample = metrics.registry.get_sample_value
    assert sample("stillroom_threshold_moves_total", {"task": "t", "direction": "loosen"}) == 1
    assert sample("stillroom_threshold_moves_total", {"task": "t", "direction": "tighten"}) == 0
    assert sample("stillroom_confidence_threshold", {"task": "t"}) == pytest.approx(-0.25)
    low = sample("stillroom_realised_agreement", {"task": "t", "figure": "low"})
    assert low is not None
    assert 0.98 < low < 1.0


def test_a_new_version_starts_from_its_own_calibrated_threshold(engine: Engine) -> None:
    set_task(engine, controlled_threshold=-0.4, controlled_version_id="another-version")
    assert threshold(engine) == CALIBRATED


def test_after_tightening_only_answers_served_since_then_earn_a_loosening(engine: Engine) -> None:
    rules = ControlRules(min_pairs=400, loosen_pairs=100)
    set_task(engine, controlled_threshold=-0.4, controlled_version_id=VERSION)
    audit(engine, 300, confidence=-0.05)
    audit(engine, 100, agree=False, confidence=-0.3)
    [tightened] = steer(engine, SETTINGS, rules=rules)
    assert tightened.direction == "tighten"
    audit(engine, 100, confidence=-0.05)
    assert steer(engine, SETTINGS, rules=rules) == [], "100 answers since are too few"
    audit(engine, 300, confidence=-0.05)
    [loosened] = steer(engine, SETTINGS, rules=rules)
    assert loosened.direction == "loosen"
