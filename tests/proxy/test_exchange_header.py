"""Every answer names the exchange it was recorded as (``X-Stillroom-Exchange-Id``), on
each API, from the teacher and from the student, whole and streamed, errors included:
it is what an app gives feedback by."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from sqlmodel import Session, select

from core.settings import Settings
from core.tables import Exchange, StudentVersion

from conftest import RunningProxy
from fakes.anthropic import FakeAnthropic
from fakes.teacher import FakeTeacher, Fault
from routing_support import SYSTEM, TASK, set_policy
from servers import ServerThread, free_port, stored_exchanges, wait_until

HEADER = "x-stillroom-exchange-id"
CLAUDE = "claude-haiku-4-5"


def stored(proxy: RunningProxy, exchange_id: str) -> Exchange:
    """The exchange the header names, once the capture writer has stored it."""
    wait_until(lambda: any(e.id == exchange_id for e in stored_exchanges(proxy.engine, 1)))
    with Session(proxy.engine) as session:
        exchange = session.get(Exchange, exchange_id)
    assert exchange is not None
    return exchange


def chat(proxy: RunningProxy, *, stream: bool = False) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [SYSTEM, {"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={**body, "stream": stream},
        headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-client"},
        timeout=10,
    ) as response:
        response.read()
    return response


def test_a_teacher_answer_names_its_exchange_whole_and_streamed(proxy: RunningProxy) -> None:
    for stream in (False, True):
        response = chat(proxy, stream=stream)
        assert response.status_code == 200
        exchange = stored(proxy, response.headers[HEADER])
        assert (exchange.served_by, exchange.stream) == ("teacher", stream)


def test_a_teacher_response_names_its_exchange(proxy: RunningProxy) -> None:
    raw = proxy.client().responses.with_raw_response.create(model="gpt-4o-mini", input="hi")
    assert stored(proxy, raw.headers[HEADER]).dialect == "responses"


def test_a_teacher_error_names_its_exchange(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    teacher.faults.append(Fault(status=429))
    response = chat(proxy)
    assert response.status_code == 429
    assert stored(proxy, response.headers[HEADER]).status == "error"


def test_an_unreachable_teacher_error_names_its_exchange(
    make_settings: Callable[..., Settings], start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(make_settings(teacher_url=f"http://127.0.0.1:{free_port()}/v1"))
    response = chat(proxy)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "teacher_unreachable"
    assert stored(proxy, response.headers[HEADER]).http_status == 502


@pytest.fixture
def live(routed_proxy: Callable[..., RunningProxy]) -> RunningProxy:
    proxy = routed_proxy()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    return proxy


def test_a_student_answer_names_its_exchange_whole_and_streamed(live: RunningProxy) -> None:
    for stream in (False, True):
        response = chat(live, stream=stream)
        assert response.headers["x-stillroom-served-by"] == "student"
        exchange = stored(live, response.headers[HEADER])
        assert (exchange.served_by, exchange.stream) == ("student", stream)
        assert exchange.version_id is not None


def test_a_student_response_names_its_exchange(live: RunningProxy) -> None:
    raw = live.client().responses.with_raw_response.create(
        model="gpt-4o-mini",
        instructions=SYSTEM["content"],
        input="my bill is wrong",
        extra_headers={"X-Stillroom-Task": TASK},
    )
    assert raw.headers["x-stillroom-served-by"] == "student"
    assert stored(live, raw.headers[HEADER]).dialect == "responses"


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    fake.responder = lambda payload: "billing"
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


def ask_claude(proxy: RunningProxy) -> Any:
    with anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant", max_retries=0) as client:
        return client.messages.with_raw_response.create(
            model=CLAUDE,
            max_tokens=32,
            system=SYSTEM["content"],
            messages=[{"role": "user", "content": "my bill is wrong"}],
            extra_headers={"X-Stillroom-Task": TASK},
        )


def test_teacher_and_student_messages_name_their_exchanges(
    routed_proxy: Callable[..., RunningProxy], claude: FakeAnthropic
) -> None:
    proxy = routed_proxy(anthropic_url=claude.url)
    teacher_raw = ask_claude(proxy)
    assert stored(proxy, teacher_raw.headers[HEADER]).served_by == "teacher"
    with Session(proxy.engine) as session:
        version = session.exec(select(StudentVersion)).one()
        profile = {**version.evaluation["profile"], "models": [CLAUDE]}
        version.evaluation = {**version.evaluation, "profile": profile}
        session.add(version)
        session.commit()
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    student_raw = ask_claude(proxy)
    assert student_raw.headers["x-stillroom-served-by"] == "student"
    exchange = stored(proxy, student_raw.headers[HEADER])
    assert (exchange.served_by, exchange.dialect) == ("student", "messages")
