"""A task's student answering on Anthropic's Messages API, through a real proxy with the
anthropic SDK as the client and an Anthropic-speaking teacher: live, streamed, shadowed
and audited (the audit asks the Anthropic teacher), and what only the teacher can do sent
to it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import Message
from sqlmodel import Session, select

from core.tables import ShadowResult, StudentVersion

from conftest import RunningProxy
from fakes.anthropic import FakeAnthropic
from fakes.teacher import FakeTeacher
from routing_support import SYSTEM, TASK, set_policy
from servers import ServerThread, stored_exchanges, wait_until

MODEL = "claude-haiku-4-5"
INSTRUCTIONS = SYSTEM["content"]
TASK_HEADER = {"X-Stillroom-Task": TASK}


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.responder = lambda payload: "billing"
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def proxy(routed_proxy: Callable[..., RunningProxy], claude: FakeAnthropic) -> RunningProxy:
    """The task's student, trained on Claude's answers, behind a proxy with Claude as the
    teacher of /v1/messages."""
    running = routed_proxy(anthropic_url=claude.url)
    with Session(running.engine) as session:
        version = session.exec(select(StudentVersion)).one()
        profile = {**version.evaluation["profile"], "models": [MODEL]}
        version.evaluation = {**version.evaluation, "profile": profile}
        session.add(version)
        session.commit()
    return running


@pytest.fixture
def sdk(proxy: RunningProxy) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)
    yield client
    client.close()


def ask(sdk: anthropic.Anthropic, text: str = "my bill is wrong", **extra: Any) -> Any:
    """``client.messages.create``, raw: the parsed message and the HTTP answer."""
    return sdk.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=32,
        system=INSTRUCTIONS,
        messages=[{"role": "user", "content": text}],
        extra_headers=TASK_HEADER,
        **extra,
    )


def scored_pairs(proxy: RunningProxy) -> list[ShadowResult]:
    with Session(proxy.engine) as session:
        return list(session.exec(select(ShadowResult)).all())


def test_live_student_answers_a_message_the_sdk_parses(
    proxy: RunningProxy, sdk: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    raw = ask(sdk)
    body = json.loads(raw.http_response.content)
    message = Message.model_validate(body)
    assert message.content[0].type == "text"
    assert message.content[0].text == "billing"
    assert (message.model, message.role, message.stop_reason) == (MODEL, "assistant", "end_turn")
    assert message.id.startswith("msg_")
    assert raw.headers["x-stillroom-served-by"] == "student"
    assert raw.headers["x-stillroom-task"] == TASK
    assert raw.headers["x-stillroom-student-version"] == "v1"
    assert claude.requests == []

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.served_by, exchange.dialect, exchange.status) == ("student", "messages", "ok")
    assert exchange.response_id == message.id
    assert exchange.client_response == body
    saved = proxy.runtime.metrics.registry.get_sample_value(
        "stillroom_savings_usd_total", {"task": TASK}
    )
    assert saved is not None
    assert saved > 0, "priced against what Claude would have cost"


def test_live_student_streams_events_the_sdk_reassembles(
    proxy: RunningProxy, sdk: anthropic.Anthropic
) -> None:
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=32,
        system=INSTRUCTIONS,
        messages=[{"role": "user", "content": "my bill is wrong"}],
        extra_headers=TASK_HEADER,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "billing"
    assert final.stop_reason == "end_turn"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.served_by, exchange.stream, exchange.response_id) == (
        "student",
        True,
        final.id,
    )


def test_shadow_scores_the_student_on_messages_traffic(
    proxy: RunningProxy, sdk: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    set_policy(proxy, mode="shadow", shadow_percent=100)
    assert ask(sdk).headers["x-stillroom-served-by"] == "teacher"
    assert len(claude.message_requests()) == 1
    wait_until(lambda: len(scored_pairs(proxy)) == 1)
    [result] = scored_pairs(proxy)
    assert (result.kind, result.agrees) == ("shadow", True)
    assert (result.student_answer, result.teacher_answer) == ("billing", "billing")


def test_audit_asks_the_anthropic_teacher_the_clients_own_request(
    proxy: RunningProxy, sdk: anthropic.Anthropic, claude: FakeAnthropic, teacher: FakeTeacher
) -> None:
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=100)
    assert ask(sdk).headers["x-stillroom-served-by"] == "student"
    wait_until(lambda: len(scored_pairs(proxy)) == 1)
    [audit] = scored_pairs(proxy)
    assert (audit.kind, audit.agrees) == ("audit", True)
    [asked] = claude.message_requests()
    assert asked.json()["system"] == INSTRUCTIONS
    assert "stream" not in asked.json()
    assert asked.headers["authorization"] == "Bearer sk-ant-client"
    assert teacher.requests == [], "never the OpenAI teacher"
    exchanges = {e.id: e for e in stored_exchanges(proxy.engine, 2)}
    audited = exchanges[audit.exchange_id]
    assert (audited.origin, audited.dialect) == ("audit", "messages")


def test_server_tools_go_to_the_teacher_with_their_reason(
    proxy: RunningProxy, sdk: anthropic.Anthropic, claude: FakeAnthropic
) -> None:
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    web_search: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
    raw = ask(sdk, tools=[web_search])
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    routed = proxy.runtime.metrics.registry.get_sample_value(
        "stillroom_routing_decisions_total", {"task": TASK, "reason": "server_tool"}
    )
    assert routed == 1
    assert claude.message_requests()[0].json()["tools"] == [web_search]


def test_the_student_answers_under_the_stillroom_headers_of_a_raw_request(
    proxy: RunningProxy,
) -> None:
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    response = httpx.post(
        proxy.url + "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 32,
            "system": INSTRUCTIONS,
            "messages": [{"role": "user", "content": "my bill is wrong"}],
        },
        headers={"x-api-key": "sk-ant-client", "anthropic-version": "2023-06-01", **TASK_HEADER},
    )
    assert response.status_code == 200
    assert response.headers["x-stillroom-served-by"] == "student"
    assert response.json()["content"] == [{"type": "text", "text": "billing"}]
