"""Teacher faults on the Responses API and on Anthropic's Messages, from llmock (a mock
of both APIs that injects them): rate limits with ``retry-after``, server errors, a stream
cut or truncated mid-way, a malformed event, latency. The client sees each in its API's
shape and status; the store records an error or an aborted exchange, never a pair."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from llmock.scenarios import Delay, Fail, SlowFirstToken, StreamFault
from llmock.testing import LLMockServer

from core.settings import Settings
from distiller.curation import answer_of

from conftest import RunningProxy
from fakes.anthropic import API_VERSION
from servers import free_port, stored_exchanges
from wire_schema import validate_error

TICKET = "My card was charged twice"
CLAUDE = "claude-haiku-4-5"
RESPONSES = {"path": "/v1/responses", "headers": {"authorization": "Bearer sk-client"}}
MESSAGES = {
    "path": "/v1/messages",
    "headers": {"x-api-key": "sk-ant-client", "anthropic-version": API_VERSION},
}


@pytest.fixture
def llmock_server() -> Iterator[LLMockServer]:
    server = LLMockServer(host="127.0.0.1", port=free_port()).start()
    yield server
    server._server.force_exit = True
    server.stop()


@pytest.fixture
def proxy(
    llmock_server: LLMockServer,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    settings = make_settings(
        teacher_url=llmock_server.base_url("openai"),
        anthropic_url=llmock_server.base_url("anthropic"),
    )
    return start_proxy(settings)


def faults(server: LLMockServer) -> Any:
    return server.state.scenarios


def body_of(dialect: str, *, stream: bool) -> dict[str, Any]:
    if dialect == "responses":
        return {"model": "gpt-4o-mini", "input": TICKET, "stream": stream}
    messages = [{"role": "user", "content": TICKET}]
    return {"model": CLAUDE, "max_tokens": 64, "messages": messages, "stream": stream}


def streamed(proxy: RunningProxy, dialect: str) -> list[bytes]:
    """The events of one streamed request, as the client receives them."""
    route = RESPONSES if dialect == "responses" else MESSAGES
    with httpx.stream(
        "POST",
        proxy.url + str(route["path"]),
        json=body_of(dialect, stream=True),
        headers=route["headers"],  # type: ignore[arg-type]
        timeout=10,
    ) as response:
        assert response.status_code == 200
        return [event for event in response.read().split(b"\n\n") if event.strip()]


def data_of(event: bytes) -> Any:
    return json.loads(event.split(b"data: ", 1)[1])


def sdk(proxy: RunningProxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)


# --- errors before any answer ----------------------------------------------------------------


def test_a_rate_limit_on_responses_reaches_the_sdk_with_retry_after(
    proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    faults(llmock_server).add(Fail(429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client().responses.create(model="gpt-4o-mini", input=TICKET)
    assert caught.value.response.headers["retry-after"] == "7"
    validate_error(caught.value.response.json())
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.http_status) == ("responses", "error", 429)


def test_a_rate_limit_on_messages_reaches_the_sdk_in_anthropics_shape(
    proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    faults(llmock_server).add(Fail(429, retry_after=7))
    with sdk(proxy) as client, pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": TICKET}]
        )
    assert caught.value.response.headers["retry-after"] == "7"
    body = caught.value.response.json()
    assert (body["type"], body["error"]["type"]) == ("error", "rate_limit_error")
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.http_status) == ("messages", "error", 429)


def test_a_server_error_on_responses_keeps_its_status(
    proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    faults(llmock_server).add(Fail(503))
    with pytest.raises(openai.InternalServerError) as caught:
        proxy.client().responses.create(model="gpt-4o-mini", input=TICKET, stream=True)
    assert caught.value.status_code == 503
    validate_error(caught.value.response.json())
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", 503)
    assert answer_of(exchange) == (None, "error")


def test_an_overloaded_anthropic_teacher_is_a_529_the_sdk_knows(
    proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    faults(llmock_server).add(Fail(529))
    with sdk(proxy) as client, pytest.raises(anthropic.OverloadedError) as caught:
        client.messages.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": TICKET}]
        )
    assert caught.value.response.json()["error"]["type"] == "overloaded_error"
    assert "retry-after" in caught.value.response.headers
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", 529)


# --- streams that break ----------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["responses", "messages"])
@pytest.mark.parametrize("kind", ["disconnect", "truncate"])
def test_a_stream_cut_mid_way_ends_with_an_error_event_and_is_aborted(
    proxy: RunningProxy, llmock_server: LLMockServer, dialect: str, kind: str
) -> None:
    faults(llmock_server).add(StreamFault(kind, after_chunks=3))  # type: ignore[arg-type]
    events = streamed(proxy, dialect)
    assert len(events) == 4, "the three events sent, then the error"
    assert events[-1].startswith(b"event: error\n")
    error = data_of(events[-1])
    assert error["type"] == "error"
    if dialect == "responses":
        assert error["code"] == "teacher_stream_cut"
    else:
        assert "stopped sending" in error["error"]["message"]
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status) == (dialect, "aborted")
    assert answer_of(exchange) == (None, "aborted")


@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_a_malformed_event_ends_the_stream_and_is_an_error(
    proxy: RunningProxy, llmock_server: LLMockServer, dialect: str
) -> None:
    faults(llmock_server).add(StreamFault("malformed", after_chunks=2))
    events = streamed(proxy, dialect)
    assert len(events) == 4, "two good events, the malformed one as sent, then the error"
    with pytest.raises(json.JSONDecodeError):
        data_of(events[2])
    assert events[-1].startswith(b"event: error\n")
    error = data_of(events[-1])
    message = error["message"] if dialect == "responses" else error["error"]["message"]
    assert "does not fit its stream" in message
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status) == (dialect, "error")
    assert answer_of(exchange) == (None, "error")


def test_the_sdks_fail_at_a_malformed_event_as_they_would_at_the_teacher(
    proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    # The fourth event: one both SDKs parse (Anthropic's third is a ping it skips).
    faults(llmock_server).add(StreamFault("malformed", after_chunks=3, times=2))
    with pytest.raises(json.JSONDecodeError):
        list(proxy.client().responses.create(model="gpt-4o-mini", input=TICKET, stream=True))
    with (
        sdk(proxy) as client,
        pytest.raises(json.JSONDecodeError),
        client.messages.stream(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": TICKET}]
        ) as stream,
    ):
        stream.until_done()
    exchanges = stored_exchanges(proxy.engine, 2)
    assert {(e.dialect, e.status) for e in exchanges} == {
        ("responses", "error"),
        ("messages", "error"),
    }


# --- a slow teacher --------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_a_slow_teacher_is_waited_for_and_its_latency_recorded(
    proxy: RunningProxy, llmock_server: LLMockServer, dialect: str
) -> None:
    faults(llmock_server).add(Delay(0.4), SlowFirstToken(0.4))
    route = RESPONSES if dialect == "responses" else MESSAGES
    whole = httpx.post(
        proxy.url + str(route["path"]),
        json=body_of(dialect, stream=False),
        headers=route["headers"],  # type: ignore[arg-type]
        timeout=10,
    )
    assert whole.status_code == 200, whole.text
    events = streamed(proxy, dialect)
    assert b"response.completed" in events[-1] or b"message_stop" in events[-1]
    plain, stream = sorted(stored_exchanges(proxy.engine, 2), key=lambda e: e.stream)
    assert (plain.status, stream.status) == ("ok", "ok")
    assert plain.latency_ms is not None
    assert plain.latency_ms >= 400, "the teacher's delay is in the latency"
    assert stream.first_chunk_ms is not None
    assert stream.first_chunk_ms >= 400, "and its slow first event in the time to it"
