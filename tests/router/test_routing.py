"""Routing per task: off, shadow, live at a percentage; gates; fallback; stickiness."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from sqlmodel import Session, select

from core.tables import ShadowResult
from router.bucketing import bucket
from router.policy import StudentRef
from router.student import PromptEmbedding, Student, StudentReply

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import FakeVllm
from routing_support import ADAPTER, SYSTEM, TASK, ask, set_policy
from servers import stored_exchanges, wait_until
from wire_schema import validate_chat_completion, validate_error, validate_sse_stream


class WatchedStudent:
    """A student that notes when a call to it is cancelled."""

    def __init__(self, inner: Student) -> None:
        self.inner = inner
        self.cancelled = threading.Event()

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        try:
            return await self.inner.answer(student, payload, prompt=prompt)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def scored_pairs(proxy: RunningProxy) -> list[ShadowResult]:
    with Session(proxy.engine) as session:
        return list(session.exec(select(ShadowResult)).all())


def student_calls(vllm: FakeVllm) -> int:
    return sum(1 for call in vllm.requests if call.path == "/v1/chat/completions")


def test_off_mode_sends_everything_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    for _ in range(5):
        assert ask(proxy).headers["x-stillroom-served-by"] == "teacher"
    assert student_calls(vllm) == 0
    assert len(teacher.chat_requests()) == 5


def test_live_at_100_percent_is_answered_by_the_student(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    response = ask(proxy)
    assert response.headers["x-stillroom-served-by"] == "student"
    assert response.headers["x-stillroom-student-version"] == "v1"
    body = response.json()
    validate_chat_completion(body)
    assert body["model"] == "gpt-4o-mini"
    assert body["choices"][0]["message"]["content"] == "billing"
    assert body["choices"][0]["logprobs"] is None
    assert teacher.chat_requests() == []
    assert vllm.chat_requests()[-1].body["model"] == ADAPTER


def test_student_answer_streams_as_a_normal_openai_stream(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[SYSTEM, {"role": "user", "content": "refund"}],  # type: ignore[list-item]
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"X-Stillroom-Task": TASK},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "billing"
    assert chunks[-1].usage is not None
    raw = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o-mini",
            "messages": [SYSTEM, {"role": "user", "content": "x"}],
            "stream": True,
        },
        headers={"x-stillroom-task": TASK},
    )
    validate_sse_stream(raw.content)


def test_live_share_matches_the_cutover_and_is_sticky_per_user(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=30, audit_percent=0)
    served: dict[str, str] = {}
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for n in range(2000):
            response = client.post(
                "/v1/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [SYSTEM, {"role": "user", "content": f"question {n % 7}"}],
                    "user": f"user-{n}",
                },
                headers={"x-stillroom-task": TASK},
            )
            assert response.status_code == 200
            served[f"user-{n}"] = response.headers["x-stillroom-served-by"]
        share = Counter(served.values())["student"] / len(served)
        assert 0.27 <= share <= 0.33
        for n in range(0, 2000, 50):
            again = client.post(
                "/v1/chat/completions",
                json={
                    "model": "gpt-4o-mini",
                    "messages": [SYSTEM, {"role": "user", "content": "something else"}],
                    "user": f"user-{n}",
                },
                headers={"x-stillroom-task": TASK},
            )
            assert again.headers["x-stillroom-served-by"] == served[f"user-{n}"]


def test_buckets_are_stable_and_spread_evenly() -> None:
    values = [bucket(TASK, f"user-{n}") for n in range(10_000)]
    assert values == [bucket(TASK, f"user-{n}") for n in range(10_000)]
    assert 0.28 < sum(v < 30 for v in values) / len(values) < 0.32


def test_low_confidence_answer_is_escalated_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy(threshold=-0.5)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    vllm.token_logprobs[ADAPTER] = -2.0
    vllm.answers[ADAPTER] = "refund"
    response = ask(proxy)
    assert response.headers["x-stillroom-served-by"] == "fallback"
    assert response.json()["choices"][0]["message"]["content"] == "billing"
    assert len(teacher.chat_requests()) == 1


def test_version_without_a_calibrated_threshold_never_serves(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy(threshold=None)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    assert ask(proxy).headers["x-stillroom-served-by"] == "fallback"


def test_invalid_json_answer_is_escalated_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    vllm.structured_outputs = False  # as a student server that does not hold it to JSON
    vllm.answers[ADAPTER] = '{"intent": "bill'
    response = ask(proxy, response_format={"type": "json_object"})
    assert response.headers["x-stillroom-served-by"] == "fallback"
    assert len(teacher.chat_requests()) == 1


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"model": "gpt-4o"}, "model"),
    ],
)
def test_requests_the_student_was_not_trained_for_go_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy],
    vllm: FakeVllm,
    extra: dict[str, object],
    reason: str,
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    assert ask(proxy, **extra).headers["x-stillroom-served-by"] == "teacher"
    assert ask(proxy, text="x" * 1000).headers["x-stillroom-served-by"] == "teacher"
    assert student_calls(vllm) == 0
    metrics = httpx.get(proxy.url + "/metrics").text
    assert f'stillroom_routing_decisions_total{{reason="{reason}",task="{TASK}"}} 1.0' in metrics


def test_student_killed_mid_run_never_reaches_the_client(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    served = []
    for n in range(30):
        if n == 10:
            vllm.server.stop()  # type: ignore[attr-defined]
        response = ask(proxy, text=f"question {n}")
        assert response.status_code == 200
        served.append(response.headers["x-stillroom-served-by"])
    assert served[:10] == ["student"] * 10
    assert served[10:] == ["fallback"] * 20


def test_slow_student_times_out_to_the_teacher(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy(student_timeout_seconds=0.3)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    vllm.delay = 1.0
    started = time.monotonic()
    response = ask(proxy)
    assert response.headers["x-stillroom-served-by"] == "fallback"
    assert time.monotonic() - started < 1.0


def test_shadow_scores_the_student_without_slowing_the_client(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="shadow", shadow_percent=100)
    vllm.delay = 1.5
    started = time.monotonic()
    response = ask(proxy)
    elapsed = time.monotonic() - started
    assert response.headers["x-stillroom-served-by"] == "teacher"
    assert elapsed < 1.0, "the client waited for the shadow call"

    wait_until(lambda: len(scored_pairs(proxy)) == 1, timeout=10)
    [result] = scored_pairs(proxy)
    assert result.kind == "shadow"
    assert result.agrees
    assert (result.student_answer, result.teacher_answer) == ("billing", "billing")


def test_audit_asks_the_teacher_about_live_student_answers(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=100)
    vllm.answers[ADAPTER] = "refund"
    assert ask(proxy).headers["x-stillroom-served-by"] == "student"

    wait_until(lambda: len(scored_pairs(proxy)) == 1, timeout=10)
    [audit] = scored_pairs(proxy)
    assert audit.kind == "audit"
    assert not audit.agrees
    assert teacher.chat_requests()[0].headers["authorization"] == "Bearer sk-client"
    exchanges = {e.id: e for e in stored_exchanges(proxy.engine, 2)}
    assert sorted((e.served_by, e.origin) for e in exchanges.values()) == [
        ("student", "client"),
        ("teacher", "audit"),
    ]
    assert exchanges[audit.exchange_id].origin == "audit", "the audit's own teacher call"


def test_an_audit_is_audit_spend_not_a_request(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=100)
    assert ask(proxy).headers["x-stillroom-served-by"] == "student"
    wait_until(lambda: len(scored_pairs(proxy)) == 1, timeout=10)
    [audit] = [e for e in stored_exchanges(proxy.engine, 2) if e.origin == "audit"]
    assert audit.cost_usd is not None
    assert audit.cost_usd > 0

    def sample(name: str, **labels: str) -> float:
        value = proxy.runtime.metrics.registry.get_sample_value(name, labels)
        return float(value or 0.0)

    requests = [
        sample("stillroom_requests_total", task=TASK, served_by=served_by, status="ok")
        for served_by in ("teacher", "student", "fallback")
    ]
    assert requests == [0.0, 1.0, 0.0]
    assert sample("stillroom_request_seconds_count", served_by="teacher", stream="false") == 0
    assert sample("stillroom_overhead_seconds_count", stream="false") == 1
    assert sample("stillroom_cost_usd_total", task=TASK, served_by="teacher") == 0
    assert sample("stillroom_tokens_total", task=TASK, served_by="teacher", direction="in") == 0
    assert sample("stillroom_audit_cost_usd_total", task=TASK) == pytest.approx(audit.cost_usd)


def test_client_gone_while_the_student_answers_cancels_the_student_call(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy(student_timeout_seconds=30)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    watched = WatchedStudent(proxy.runtime.students)
    proxy.runtime.router = dataclasses.replace(proxy.runtime.router, students=watched)
    vllm.delay = 5.0
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [SYSTEM, {"role": "user", "content": "x"}]},
            headers={"x-stillroom-task": TASK},
            timeout=0.5,
        )
    assert watched.cancelled.wait(5), "the student call went on without a client"
    assert time.monotonic() - started < 3.0
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.served_by, exchange.status, exchange.http_status) == (
        "student",
        "aborted",
        499,
    )
    wait_until(lambda: proxy.runtime.metrics.client_disconnects._value.get() == 1)
    assert teacher.chat_requests() == [], "no fallback for a client that left"


def test_a_live_tasks_teacher_share_outside_the_cutover_is_shadowed(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    """The evidence that earns auto-ramp's next stage keeps coming while the task is live."""
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=0, shadow_percent=100)
    assert ask(proxy).headers["x-stillroom-served-by"] == "teacher"

    wait_until(lambda: len(scored_pairs(proxy)) == 1, timeout=10)
    [result] = scored_pairs(proxy)
    assert result.kind == "shadow"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert result.exchange_id == exchange.id


@pytest.mark.parametrize(
    "change",
    [
        {"cutover_percent": 101},
        {"cutover_percent": -1},
        {"mode": "turbo"},
        {"colour": "red"},
    ],
)
def test_invalid_policy_changes_are_refused_and_change_nothing(
    routed_proxy: Callable[..., RunningProxy], change: dict[str, object]
) -> None:
    proxy = routed_proxy()
    before = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json={"mode": "live", **change})
    assert response.status_code == 400
    validate_error(response.json())
    assert httpx.get(proxy.url + f"/admin/tasks/{TASK}").json() == before


def test_unknown_task_is_a_404(routed_proxy: Callable[..., RunningProxy]) -> None:
    proxy = routed_proxy()
    response = httpx.patch(proxy.url + "/admin/tasks/nope", json={"mode": "live"})
    assert response.status_code == 404
    validate_error(response.json())


@pytest.mark.postgres
def test_policy_change_through_one_replica_reaches_the_other_within_two_seconds(
    routed_proxy: Callable[..., RunningProxy],
    start_proxy: Callable[..., RunningProxy],
    postgres_url: str,
) -> None:
    first = routed_proxy(database_url=postgres_url, policy_refresh_seconds=1.0)
    second = start_proxy(first.settings)
    assert ask(second).headers["x-stillroom-served-by"] == "teacher"
    response = httpx.patch(
        first.url + f"/admin/tasks/{TASK}",
        json={"mode": "live", "cutover_percent": 100, "audit_percent": 0},
    )
    assert response.status_code == 200
    wait_until(lambda: ask(second).headers["x-stillroom-served-by"] == "student", timeout=2.0)


def test_task_summary_shows_who_served_live_agreement_and_savings(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=100)
    for n in range(4):
        assert ask(proxy, text=f"bill {n}").headers["x-stillroom-served-by"] == "student"

    def audited() -> bool:
        summary = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
        stored = summary["served_by"].get("student") == 4
        return bool(stored and summary["live_agreement"]["audit"]["pairs"] == 4)

    wait_until(audited, timeout=10)
    exchanges = stored_exchanges(proxy.engine, 8)
    summary = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    assert summary["served_by"] == {"student": 4}, "audits are not requests"
    assert summary["exchanges"] == {"total": 4, "ok": 4}
    assert summary["live_agreement"]["audit"]["agreement"] == 1.0
    assert summary["savings_usd"] > 0
    audit_cost = sum(e.cost_usd or 0.0 for e in exchanges if e.origin == "audit")
    assert audit_cost > 0
    assert summary["audits"] == {"exchanges": 4, "cost_usd": pytest.approx(audit_cost)}
    assert summary["cost_usd"] == pytest.approx(sum(e.cost_usd or 0.0 for e in exchanges))
