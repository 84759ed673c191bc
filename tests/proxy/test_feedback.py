"""Feedback on an answer (``POST /admin/exchanges/{id}/feedback``, ``stillroom feedback``):
a bad teacher answer never trains, a correction trains in its place, and a bad student
answer counts against its version in drift. On SQLite and Postgres."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from core.embedding import Encoder
from core.metrics import Metrics
from core.settings import Settings
from core.store import list_exchanges
from core.tables import Exchange, ShadowResult
from distiller.curation import CuratedSet, CurationConfig, curate
from router.drift import DriftMonitor

from conftest import RunningProxy
from fakes.teacher import FakeTeacher, Fault
from routing_support import TASK, ask, set_policy
from servers import stored_exchanges, wait_until

STILLROOM = str(Path(sys.executable).with_name("stillroom"))


@pytest.fixture
def served(
    teacher: FakeTeacher,
    database_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    """A proxy in front of the teacher, on the store under test."""
    return start_proxy(make_settings(teacher_url=teacher.url + "/v1", database_url=database_url))


def answered(proxy: RunningProxy, text: str = "my bill is wrong", **extra: Any) -> str:
    """Ask; the exchange id the answer names, once it is stored."""
    exchange_id: str = ask(proxy, text, **extra).headers["x-stillroom-exchange-id"]
    wait_until(lambda: any(e.id == exchange_id for e in stored_exchanges(proxy.engine, 1)))
    return exchange_id


def rate(proxy: RunningProxy, exchange_id: str, **body: Any) -> httpx.Response:
    return httpx.post(proxy.url + f"/admin/exchanges/{exchange_id}/feedback", json=body)


def curated(proxy: RunningProxy) -> CuratedSet:
    with Session(proxy.engine) as session:
        exchanges = list(list_exchanges(session=session, task=TASK))
    return curate(exchanges, CurationConfig(heldout_percent=0, near_duplicate_threshold=None))


def test_a_teacher_answer_rated_bad_is_left_out_of_training(served: RunningProxy) -> None:
    exchange_id = answered(served)
    response = rate(served, exchange_id, rating="bad")
    assert response.status_code == 200, response.text
    assert response.json()["effects"] == ["excluded from training"]
    assert curated(served).excluded["feedback_bad"] == 1
    assert curated(served).train == []
    counted = served.runtime.metrics.registry.get_sample_value(
        "stillroom_feedback_total", {"task": TASK, "rating": "bad", "served_by": "teacher"}
    )
    assert counted == 1
    view = httpx.get(served.url + f"/admin/tasks/{TASK}").json()
    assert view["feedback"] == {"good": 0, "bad": 1, "corrected": 0, "retry": 0, "reask": 0}


def test_a_correction_trains_in_place_of_the_teacher_answer(served: RunningProxy) -> None:
    exchange_id = answered(served)
    response = rate(served, exchange_id, rating="bad", correction="refund")
    assert response.json()["effects"] == [
        "the correction replaces the teacher's answer in training"
    ]
    [example] = curated(served).train
    assert (example.exchange_id, example.answer) == (exchange_id, "refund")
    with Session(served.engine) as session:
        exchange = session.get(Exchange, exchange_id)
        assert exchange is not None
        assert exchange.corrected_response is not None
        assert exchange.corrected_response["choices"][0]["message"]["content"] == "refund"
        assert exchange.response is not None, "the teacher's own answer is kept"
    assert httpx.get(served.url + f"/admin/tasks/{TASK}").json()["feedback"]["corrected"] == 1


def test_rating_again_replaces_the_earlier_rating(served: RunningProxy) -> None:
    exchange_id = answered(served)
    rate(served, exchange_id, rating="bad", correction="refund")
    again = rate(served, exchange_id, rating="good")
    assert again.json()["effects"] == ["kept in training"]
    with Session(served.engine) as session:
        exchange = session.get(Exchange, exchange_id)
        assert exchange is not None
        assert (exchange.feedback, exchange.corrected_response) == ("good", None)
    [example] = curated(served).train
    assert example.answer != "refund"


def test_unknown_exchange_is_a_404_in_openai_shape(proxy: RunningProxy) -> None:
    response = rate(proxy, "0" * 32, rating="bad")
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "exchange_id")


@pytest.mark.parametrize("body", [{"rating": "meh"}, {"rating": "good", "correction": "x"}])
def test_a_bad_rating_is_a_400(proxy: RunningProxy, body: dict[str, Any]) -> None:
    exchange_id = answered(proxy)
    response = rate(proxy, exchange_id, **body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_correction_of_an_error_answer_is_a_400(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(status=500))
    exchange_id = answered(proxy)
    response = rate(proxy, exchange_id, rating="bad", correction="refund")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "correction"
    with Session(proxy.engine) as session:
        exchange = session.get(Exchange, exchange_id)
        assert exchange is not None
        assert exchange.feedback is None, "nothing stored from a refused feedback"


def test_a_correction_of_a_tool_call_answer_is_its_arguments(proxy: RunningProxy) -> None:
    tools = [{"type": "function", "function": {"name": "route", "parameters": {}}}]
    exchange_id = answered(proxy, tools=tools)
    refused = rate(proxy, exchange_id, rating="bad", correction="refund")
    assert refused.status_code == 400, "a call's arguments are JSON"
    response = rate(proxy, exchange_id, rating="bad", correction='{"intent": "refund"}')
    assert response.status_code == 200, response.text
    with Session(proxy.engine) as session:
        exchange = session.get(Exchange, exchange_id)
        assert exchange is not None
        assert exchange.corrected_response is not None
    [call] = exchange.corrected_response["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "route", "arguments": '{"intent": "refund"}'}
    assert exchange.corrected_response["choices"][0]["finish_reason"] == "tool_calls"


def test_a_student_answer_rated_bad_fails_its_version_in_drift(
    routed_proxy: Callable[..., RunningProxy], database_url: str
) -> None:
    proxy = routed_proxy(database_url=database_url, drift_min_samples=1)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    exchange_id = answered(proxy)
    response = rate(proxy, exchange_id, rating="bad", correction="refund")
    assert response.json()["effects"] == [
        "the correction replaces the student's answer in training",
        "counted against v1 as a failed audit",
    ]
    with Session(proxy.engine) as session:
        [result] = session.exec(select(ShadowResult)).all()
        exchange = session.get(Exchange, exchange_id)
    assert exchange is not None
    assert (result.kind, result.agrees, result.version_id) == (
        "feedback",
        False,
        exchange.version_id,
    )
    assert (result.student_answer, result.teacher_answer) == ("billing", "refund")
    monitor = DriftMonitor(
        engine=proxy.engine, encoder=Encoder(), settings=proxy.settings, metrics=Metrics()
    )
    report = monitor.check(TASK)
    assert report is not None
    assert (report.window_agreement, report.scored_pairs) == (0.0, 1)


def test_the_cli_marks_an_answer_wrong_with_its_correction(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    exchange_id = answered(proxy)
    env = {**os.environ, "STILLROOM_URL": proxy.url, "COLUMNS": "200"}
    done = subprocess.run(
        [STILLROOM, "feedback", exchange_id, "bad", "--correction", "refund"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "replaces the teacher's answer in training" in done.stdout
    [example] = curated(proxy).train
    assert example.answer == "refund"
