"""Drift steps a live task down to shadow and queues a retraining."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session, select

from core.embedding import Encoder
from core.metrics import Metrics
from core.store import insert_exchanges
from core.tables import (
    DriftReport,
    ExchangeCreate,
    ShadowResult,
    Task,
    TaskTransition,
    TrainingRun,
)
from router.drift import DriftMonitor

from conftest import RunningProxy
from fakes.vllm import FakeVllm
from routing_support import SYSTEM, TASK, ask, set_policy
from servers import wait_until

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August"]
BILLING = [
    "my bill for {m} is wrong",
    "why was I charged twice in {m}",
    "I need a refund for the {m} invoice",
    "the {m} payment did not go through",
    "can you explain the fees on my {m} statement",
    "my card was declined when paying the {m} bill",
    "please cancel the duplicate {m} charge",
    "how do I download my {m} receipt",
    "the amount due for {m} looks too high",
    "I was billed after cancelling in {m}",
    "update the card used for the {m} payment",
    "when is the {m} bill due",
]
CITIES = ["Paris", "Lagos", "Lima", "Oslo", "Perth", "Quito", "Seoul", "Tunis", "Hanoi", "Kyiv"]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def training_history(count: int) -> list[ExchangeCreate]:
    """Teacher exchanges from before the version was published."""
    earlier = datetime.now(UTC) - timedelta(hours=1)
    prompts = [t.format(m=m) for t in BILLING for m in MONTHS][:count]
    return [
        ExchangeCreate(
            id=uuid.uuid4().hex,
            task=TASK,
            created_at=earlier,
            served_by="teacher",
            status="ok",
            http_status=200,
            model="gpt-4o-mini",
            request={"model": "gpt-4o-mini", "messages": [SYSTEM, {"role": "user", "content": p}]},
            response={"choices": [{"index": 0, "message": {"content": "billing"}}]},
            latency_ms=1.0,
        )
        for p in prompts
    ]


def monitor(proxy: RunningProxy, encoder: Encoder) -> DriftMonitor:
    return DriftMonitor(
        engine=proxy.engine, encoder=encoder, settings=proxy.settings, metrics=Metrics()
    )


def test_inputs_unlike_the_training_set_step_the_task_down_and_queue_training(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, encoder: Encoder
) -> None:
    proxy = routed_proxy(drift_min_samples=20)
    insert_exchanges(engine=proxy.engine, exchanges=training_history(90))
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    later = ["September", "October", "November", "December"]
    for n in range(30):
        ask(proxy, text=BILLING[n % len(BILLING)].format(m=later[n % 4]) + f" (ref {n})")
    steady = monitor(proxy, encoder).check(TASK)
    assert steady is not None
    assert not steady.drifted, steady.reason

    for n in range(40):
        ask(proxy, text=f"what will the weather be in {CITIES[n % 10]} on day {n}?")
    report = monitor(proxy, encoder).check(TASK)
    assert report is not None
    assert report.drifted
    assert report.action == "stepped_down"
    assert report.input_drift is not None
    assert report.input_drift > proxy.settings.drift_input_ratio
    with Session(proxy.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert task.mode == "shadow"
        [run] = session.exec(select(TrainingRun)).all()
        assert (run.state, run.trigger) == ("queued", "drift")
        assert len(session.exec(select(DriftReport)).all()) == 2
    wait_until(lambda: ask(proxy).headers["x-stillroom-served-by"] == "teacher", timeout=5)


def audits(proxy: RunningProxy, agreeing: Callable[[int], bool], count: int = 40) -> None:
    """Scored audit pairs of the live version, ``agreeing(n)`` of the n-th."""
    with Session(proxy.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        version_id = task.active_version_id
        assert version_id is not None
        for n in range(count):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task=TASK,
                    version_id=version_id,
                    kind="audit",
                    agrees=agreeing(n),
                    score=1.0 if agreeing(n) else 0.0,
                    student_answer="refund",
                    teacher_answer="billing",
                )
            )
        session.commit()


def test_falling_shadow_and_audit_agreement_steps_the_task_down(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, encoder: Encoder
) -> None:
    proxy = routed_proxy(drift_min_samples=20)
    set_policy(proxy, mode="live", cutover_percent=100)
    audits(proxy, lambda n: n % 3 == 0)
    report = monitor(proxy, encoder).check(TASK)
    assert report is not None
    assert report.action == "stepped_down"
    assert report.window_agreement == pytest.approx(14 / 40)
    assert "agreement" in (report.reason or "")
    with Session(proxy.engine) as session:
        transitions = session.exec(select(TaskTransition)).all()
    stepped = [t for t in transitions if t.cause == "drift"]
    assert [(t.from_mode, t.to_mode) for t in stepped] == [("live", "shadow")]
    assert stepped[0].reason == report.reason


def test_a_task_asking_for_less_agreement_is_not_in_drift_above_its_own_target(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, encoder: Encoder
) -> None:
    proxy = routed_proxy(drift_min_samples=20)
    set_policy(proxy, mode="live", cutover_percent=100, target_agreement=0.8)
    audits(proxy, lambda n: n % 6 != 0)  # 33 of 40 agree: 82.5%
    report = monitor(proxy, encoder).check(TASK)
    assert report is not None
    assert report.window_agreement == pytest.approx(33 / 40)
    assert proxy.settings.drift_agreement_floor > 33 / 40, "the setting alone would step down"
    assert not report.drifted, report.reason
    assert report.action == "none"
