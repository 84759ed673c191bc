"""A task's detail shows live agreement as an estimate with its 95% interval, the threshold
its live version answers at and whose it is, and the controller's moves with their
evidence; routing answers at the threshold the task's detail shows."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from core.intervals import interval
from core.tables import ShadowResult, Task
from router.policy import load_policies
from router.threshold_control import ControlRules, steer

from conftest import RunningProxy
from routing_support import TASK, routed_proxy, set_policy, vllm

__all__ = ["routed_proxy", "vllm"]


def detail(proxy: RunningProxy) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    return body


def audits(proxy: RunningProxy, agreed: int, disagreed: int, confidence: float = -0.2) -> None:
    with Session(proxy.engine) as session:
        task = session.get(Task, TASK)
        assert task is not None
        assert task.active_version_id is not None
        for n in range(agreed + disagreed):
            session.add(
                ShadowResult(
                    id=uuid.uuid4().hex,
                    task=TASK,
                    version_id=task.active_version_id,
                    kind="audit",
                    agrees=n < agreed,
                    confidence=confidence,
                    score=1.0,
                    student_answer="billing",
                    teacher_answer="billing",
                )
            )
        session.commit()


def test_live_agreement_comes_with_its_95_percent_interval(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    audits(proxy, agreed=190, disagreed=10)
    live = detail(proxy)["live_agreement"]
    expected = interval(190, 200)
    assert live["audit"]["agreement"] == pytest.approx(0.95)
    assert (live["audit"]["low"], live["audit"]["high"]) == (
        pytest.approx(expected.low),
        pytest.approx(expected.high),
    )
    assert live["audit"]["method"] == "clopper-pearson"
    assert live["audit"]["confidence"] == 0.95
    assert live["shadow"]["pairs"] == 0
    assert live["shadow"]["agreement"] is None
    assert live["served"]["pairs"] == 200


def test_savings_are_shown_with_the_agreement_they_were_served_at(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    audits(proxy, agreed=99, disagreed=1)
    savings = detail(proxy)["savings"]
    assert savings["usd"] == 0.0
    assert savings["agreement"]["pairs"] == 100
    assert savings["agreement"]["low"] < 0.99 < savings["agreement"]["high"]


def test_controller_moves_are_listed_and_routing_answers_at_the_moved_threshold(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy(threshold=-1.0)
    set_policy(proxy, mode="live", cutover_percent=100)
    audits(proxy, agreed=500, disagreed=0)
    [move] = steer(proxy.engine, proxy.runtime.settings, rules=ControlRules())
    task = detail(proxy)
    assert task["threshold"] == {"effective": -1.25, "source": "controller", "calibrated": -1.0}
    [listed] = task["threshold_moves"]
    assert (listed["direction"], listed["from_threshold"], listed["to_threshold"]) == (
        "loosen",
        -1.0,
        -1.25,
    )
    assert (listed["pairs"], listed["agreed"]) == (500, 500)
    assert listed["reason"] == move.reason
    policy = load_policies(proxy.engine, proxy.runtime.settings)[TASK]
    assert policy.student is not None
    assert policy.student.confidence_threshold == -1.25


def test_an_admins_threshold_is_shown_as_the_admins_and_wins(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy(threshold=-1.0)
    set_policy(proxy, mode="live", cutover_percent=100, confidence_threshold=-0.5)
    audits(proxy, agreed=500, disagreed=0)
    assert steer(proxy.engine, proxy.runtime.settings) == []
    task = detail(proxy)
    assert task["threshold"] == {"effective": -0.5, "source": "admin", "calibrated": -1.0}
    assert task["threshold_moves"] == []
