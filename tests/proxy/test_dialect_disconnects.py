"""A client that leaves mid-answer on the Responses API or on Anthropic's Messages cancels
the teacher's call, and the exchange is recorded as aborted: never a training pair."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import httpx
import openai
import pytest

from core.settings import Settings
from distiller.curation import answer_of

from conftest import RunningProxy
from fakes.anthropic import API_VERSION, FakeAnthropic
from fakes.teacher import FakeTeacher, Fault
from servers import ServerThread, stored_exchanges

TICKET = "My card was charged twice"
OPENAI_KEY = {"authorization": "Bearer sk-client"}
ANTHROPIC_KEY = {"x-api-key": "sk-ant-client", "anthropic-version": API_VERSION}


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def proxy(
    teacher: FakeTeacher,
    claude: FakeAnthropic,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    settings = make_settings(teacher_url=teacher.url + "/v1", anthropic_url=claude.url)
    return start_proxy(settings)


def _leave_after_first_event(url: str, body: dict[str, object], headers: dict[str, str]) -> bytes:
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as response:
        assert response.status_code == 200
        return next(response.iter_raw())


def test_leaving_a_responses_stream_cancels_the_teacher_and_is_aborted(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(event_interval=0.3))
    body = {"model": "gpt-4o-mini", "input": TICKET, "stream": True}
    first = _leave_after_first_event(proxy.url + "/v1/responses", body, OPENAI_KEY)
    assert first.startswith(b"event: response.created")
    assert teacher.cancelled.wait(5), "the teacher's stream was not cancelled"
    assert not teacher.stream_finished.is_set()
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status) == ("responses", "aborted")
    assert answer_of(exchange) == (None, "aborted")


def test_leaving_a_messages_stream_cancels_the_teacher_and_is_aborted(
    proxy: RunningProxy, claude: FakeAnthropic
) -> None:
    claude.faults.append(Fault(event_interval=0.3))
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": TICKET}],
        "stream": True,
    }
    first = _leave_after_first_event(proxy.url + "/v1/messages", body, ANTHROPIC_KEY)
    assert first.startswith(b"event: message_start")
    assert claude.cancelled.wait(5), "the teacher's stream was not cancelled"
    assert not claude.stream_finished.is_set()
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status) == ("messages", "aborted")
    assert answer_of(exchange) == (None, "aborted")


def test_leaving_while_the_teacher_thinks_on_responses_aborts_the_exchange(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(delay=3.0))
    with pytest.raises(openai.APITimeoutError):
        proxy.client(timeout=0.5).responses.create(model="gpt-4o-mini", input=TICKET)
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.http_status) == (
        "responses",
        "aborted",
        499,
    )


def test_leaving_while_the_teacher_thinks_on_messages_aborts_the_exchange(
    proxy: RunningProxy, claude: FakeAnthropic
) -> None:
    claude.faults.append(Fault(delay=3.0))
    client = anthropic.Anthropic(
        base_url=proxy.url, api_key="sk-ant-client", max_retries=0, timeout=0.5
    )
    with client, pytest.raises(anthropic.APITimeoutError):
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": TICKET}],
        )
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.http_status) == (
        "messages",
        "aborted",
        499,
    )
