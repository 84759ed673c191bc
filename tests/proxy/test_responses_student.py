"""A task's student answering on the Responses API, through a real proxy with the openai
SDK as the client: live, streamed, shadowed and audited; the responses it gave fetched,
deleted and continued with ``previous_response_id``; what only the teacher can do sent
to the teacher."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response as SdkResponse
from sqlmodel import Session, select

from core.tables import ShadowResult
from proxy.gateway.stored_responses import OWNER_FIELD

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import FakeVllm
from routing_support import SYSTEM, TASK, set_policy
from servers import stored_exchanges, wait_until
from wire_schema import validate_response, validate_response_stream

INSTRUCTIONS = SYSTEM["content"]
TASK_HEADER = {"X-Stillroom-Task": TASK}


def create(proxy: RunningProxy, text: str = "my bill is wrong", **extra: Any) -> Any:
    """``client.responses.create``, raw: the parsed response and the HTTP answer."""
    return proxy.client().responses.with_raw_response.create(
        model="gpt-4o-mini",
        instructions=INSTRUCTIONS,
        input=text,
        extra_headers=TASK_HEADER,
        **extra,
    )


def routed(proxy: RunningProxy, reason: str) -> float | None:
    value: float | None = proxy.runtime.metrics.registry.get_sample_value(
        "stillroom_routing_decisions_total", {"task": TASK, "reason": reason}
    )
    return value


def scored_pairs(proxy: RunningProxy) -> list[ShadowResult]:
    with Session(proxy.engine) as session:
        return list(session.exec(select(ShadowResult)).all())


def test_live_student_answers_a_response_the_sdk_parses(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    raw = create(proxy)
    body = json.loads(raw.http_response.content)
    validate_response(body)
    response = SdkResponse.model_validate(body)
    assert response.output_text == "billing"
    assert response.model == "gpt-4o-mini"
    assert response.instructions == INSTRUCTIONS
    assert response.id.startswith("resp_")
    assert raw.headers["x-stillroom-served-by"] == "student"
    assert raw.headers["x-stillroom-task"] == TASK
    assert raw.headers["x-stillroom-student-version"] == "v1"
    assert teacher.responses_requests() == []

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.served_by, exchange.dialect, exchange.status) == (
        "student",
        "responses",
        "ok",
    )
    assert exchange.response_id == response.id
    assert exchange.client_response is not None
    owner = exchange.client_response.pop(OWNER_FIELD)
    assert exchange.client_response == body, "as the client saw it, and who asked"
    assert owner == hashlib.sha256(b"sk-client").hexdigest()
    assert OWNER_FIELD not in body
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == "billing"


def test_live_student_streams_events_the_sdk_reassembles(
    routed_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    with httpx.stream(
        "POST",
        proxy.url + "/v1/responses",
        json={"model": "gpt-4o-mini", "instructions": INSTRUCTIONS, "input": "my bill is wrong"}
        | {"stream": True},
        headers={"authorization": "Bearer sk-client", **TASK_HEADER},
    ) as raw:
        assert raw.headers["x-stillroom-served-by"] == "student"
        events = validate_response_stream(raw.read())
    assert events[-1]["type"] == "response.completed"

    with proxy.client().responses.stream(
        model="gpt-4o-mini",
        instructions=INSTRUCTIONS,
        input="my bill is wrong",
        extra_headers=TASK_HEADER,
    ) as stream:
        final = stream.get_final_response()
    assert final.output_text == "billing"
    exchanges = stored_exchanges(proxy.engine, 2)
    assert {(e.served_by, e.stream, e.response_id) for e in exchanges} >= {
        ("student", True, final.id)
    }


def test_a_students_response_is_fetched_from_the_store_and_deleted_there(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher, database_url: str
) -> None:
    proxy = routed_proxy(database_url=database_url)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    client = proxy.client()
    created = create(proxy).parse()
    fetched = client.responses.retrieve(created.id)
    assert fetched.output_text == "billing"
    assert fetched.id == created.id
    assert teacher.requests == [], "the teacher never held it"

    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)  # gone here, and the teacher never had it
    assert [r.method for r in teacher.requests] == ["GET"]


def test_a_follow_up_to_a_students_response_sends_the_teacher_the_whole_conversation(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher, database_url: str
) -> None:
    proxy = routed_proxy(database_url=database_url)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    first = create(proxy).parse()
    set_policy(proxy, mode="off")
    raw = create(proxy, "and the refund?", previous_response_id=first.id)
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert raw.parse().output_text == "billing"  # the fake teacher's answer on this task

    [sent] = [r.json() for r in teacher.responses_requests()]
    assert "previous_response_id" not in sent
    roles = [(item.get("role"), item.get("type", "message")) for item in sent["input"]]
    assert roles == [("user", "message"), ("assistant", "message"), ("user", "message")]
    assert sent["input"][1]["content"][0]["text"] == "billing"
    assert sent["input"][2]["content"] == "and the refund?"

    exchanges = stored_exchanges(proxy.engine, 2)
    [follow_up] = [e for e in exchanges if e.served_by == "teacher"]
    assert [m["role"] for m in follow_up.request["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert follow_up.client_request is not None
    assert follow_up.client_request["previous_response_id"] == first.id, "kept as sent"


def test_the_student_answers_a_follow_up_to_its_own_response(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    first = create(proxy, "bill?").parse()
    second = create(proxy, "again?", previous_response_id=first.id)
    assert second.headers["x-stillroom-served-by"] == "student"
    assert second.parse().previous_response_id == first.id
    asked = vllm.chat_requests()[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in asked[1:]] == [
        ("user", "bill?"),
        ("assistant", "billing"),
        ("user", "again?"),
    ]
    assert teacher.requests == []


def test_a_follow_up_to_a_teachers_response_goes_to_the_teacher_as_it_came(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    first = create(proxy, "bill?").parse()  # no mode set: the teacher answers
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    raw = create(proxy, "again?", previous_response_id=first.id)
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert teacher.responses_requests()[-1].json()["previous_response_id"] == first.id
    assert routed(proxy, "teacher_state") == 1

    exchanges = stored_exchanges(proxy.engine, 2)
    follow_up = max(exchanges, key=lambda e: e.created_at)
    assert [m["content"] for m in follow_up.request["messages"]] == [
        INSTRUCTIONS,
        "bill?",
        "billing",
        "again?",
    ], "the whole conversation, as stillroom captured it"


def test_built_in_tools_go_to_the_teacher_with_their_reason(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    raw = create(proxy, tools=[{"type": "web_search"}])
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert routed(proxy, "builtin_tool") == 1
    assert teacher.responses_requests()[0].json()["tools"] == [{"type": "web_search"}]


def test_shadow_scores_the_student_on_responses_traffic(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="shadow", shadow_percent=100)
    assert create(proxy).headers["x-stillroom-served-by"] == "teacher"
    wait_until(lambda: len(scored_pairs(proxy)) == 1)
    [result] = scored_pairs(proxy)
    assert (result.kind, result.agrees) == ("shadow", True)
    assert (result.student_answer, result.teacher_answer) == ("billing", "billing")


def test_audit_asks_the_openai_teacher_the_chat_view(
    routed_proxy: Callable[..., RunningProxy], vllm: FakeVllm, teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=100)
    assert create(proxy).headers["x-stillroom-served-by"] == "student"
    wait_until(lambda: len(scored_pairs(proxy)) == 1)
    [audit] = scored_pairs(proxy)
    assert (audit.kind, audit.agrees) == ("audit", True)
    [asked] = teacher.chat_requests()
    assert asked.json()["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
    exchanges = {e.id: e for e in stored_exchanges(proxy.engine, 2)}
    assert exchanges[audit.exchange_id].origin == "audit"


def test_a_chain_of_student_responses_is_written_out_turn_by_turn(
    routed_proxy: Callable[..., RunningProxy], teacher: FakeTeacher
) -> None:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    first = create(proxy, "one?").parse()
    second = create(proxy, "two?", previous_response_id=first.id).parse()
    set_policy(proxy, mode="off")
    create(proxy, "three?", previous_response_id=second.id)
    [sent] = [r.json() for r in teacher.responses_requests()]
    said = [
        item["content"] if isinstance(item["content"], str) else item["content"][0]["text"]
        for item in sent["input"]
    ]
    assert said == ["one?", "billing", "two?", "billing", "three?"]
    assert "previous_response_id" not in sent
