"""Anthropic's Messages API through a real proxy with the anthropic SDK as the client, an
Anthropic-speaking teacher behind it: answers relayed and captured with their chat view,
whole, streamed and with ``tool_use``; errors in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.settings import Settings

from conftest import RunningProxy
from fakes.anthropic import API_VERSION, FakeAnthropic, StreamError
from fakes.teacher import Fault
from servers import ServerThread, free_port, stored_exchanges

MODEL = "claude-haiku-4-5"
SYSTEM = "Classify the ticket."
TICKET = "My card was charged twice"
MESSAGES: list[Any] = [{"role": "user", "content": TICKET}]
TOOL: Any = {
    "name": "lookup_order",
    "description": "Find an order.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def proxy(
    claude: FakeAnthropic,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> RunningProxy:
    return start_proxy(make_settings(anthropic_url=claude.url))


Sdk = Callable[..., anthropic.Anthropic]


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    """The anthropic SDK's client of a proxy (closed after the test)."""
    made: list[anthropic.Anthropic] = []

    def make(proxy: RunningProxy, api_key: str = "sk-ant-client") -> anthropic.Anthropic:
        made.append(anthropic.Anthropic(base_url=proxy.url, api_key=api_key, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_message_is_the_teachers_and_is_captured_with_its_chat_view(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    raw = sdk(proxy).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].type == "text"
    assert message.content[0].text == f"Answer to: {TICKET}"
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert raw.headers["x-stillroom-task"].startswith("auto-")
    [sent] = claude.message_requests()
    # The anthropic SDK sends its key as a bearer token; x-api-key goes on the same way.
    assert sent.headers["authorization"] == "Bearer sk-ant-client"
    asked = raw.http_response.request.headers
    assert sent.headers["anthropic-version"] == asked["anthropic-version"]

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.served_by) == ("messages", "ok", "teacher")
    assert exchange.request["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": TICKET},
    ]
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == message.content[0].text
    assert exchange.finish_reason == "stop"
    assert exchange.client_request == sent.json()
    assert exchange.client_response == json.loads(raw.http_response.content)
    assert exchange.response_id == message.id
    assert exchange.prompt_tokens == message.usage.input_tokens
    assert exchange.completion_tokens == message.usage.output_tokens
    price = proxy.settings.price_of(MODEL)
    assert price is not None
    assert exchange.cost_usd == pytest.approx(
        price.cost(message.usage.input_tokens, message.usage.output_tokens)
    )
    assert "sk-ant-client" not in json.dumps([exchange.client_request, exchange.client_response])


def test_stream_is_relayed_as_it_arrives_and_reassembled_in_the_store(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    with sdk(proxy).messages.stream(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"Answer to: {TICKET}"

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.stream
    assert (exchange.dialect, exchange.status) == ("messages", "ok")
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == text
    assert exchange.response_id == final.id
    assert exchange.client_response is not None
    assert exchange.client_response["stop_reason"] == "end_turn"
    assert exchange.completion_tokens == final.usage.output_tokens
    assert exchange.first_chunk_ms is not None


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_answer_is_captured_as_tool_calls(
    proxy: RunningProxy, claude: FakeAnthropic, stream: bool, sdk: Sdk
) -> None:
    options: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": MESSAGES,
        "tools": [TOOL],
    }
    if stream:
        with sdk(proxy).messages.stream(**options) as events:
            message = events.get_final_message()
    else:
        message = sdk(proxy).messages.create(**options)
    [block] = [b for b in message.content if b.type == "tool_use"]
    assert block.name == "lookup_order"
    assert message.stop_reason == "tool_use"

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.finish_reason == "tool_calls"
    assert exchange.request["tools"][0]["function"]["name"] == "lookup_order"
    assert exchange.response is not None
    [call] = exchange.response["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup_order"
    assert json.loads(call["function"]["arguments"]) == block.input


def test_cache_reads_are_counted_in_the_prompt_and_priced_as_cached(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    system: Any = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    for _ in range(2):
        message = sdk(proxy).messages.create(
            model=MODEL, max_tokens=64, system=system, messages=MESSAGES
        )
    read = message.usage.cache_read_input_tokens
    assert read
    exchanges = stored_exchanges(proxy.engine, 2)
    second = max(exchanges, key=lambda e: e.created_at)
    assert second.prompt_tokens == message.usage.input_tokens + read
    price = proxy.settings.price_of(MODEL)
    assert price is not None
    assert second.cost_usd == pytest.approx(
        price.cost(message.usage.input_tokens + read, message.usage.output_tokens, read)
    )


def test_count_tokens_is_passed_through_to_anthropic(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    counted = sdk(proxy).messages.count_tokens(model=MODEL, system=SYSTEM, messages=MESSAGES)
    assert counted.input_tokens > 0
    assert [r.path for r in claude.requests] == ["/v1/messages/count_tokens"]
    assert stored_exchanges(proxy.engine, 0) == []


def test_task_header_names_the_task(proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk) -> None:
    raw = sdk(proxy).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"X-Stillroom-Task": "tickets"},
    )
    assert raw.headers["x-stillroom-task"] == "tickets"
    assert stored_exchanges(proxy.engine, 1)[0].task == "tickets"
    assert "x-stillroom-task" not in claude.message_requests()[0].headers


@pytest.mark.parametrize(
    ("status", "error_type"), [(429, "rate_limit_error"), (529, "overloaded_error")]
)
def test_teacher_errors_are_passed_on_with_status_and_retry_after(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk, status: int, error_type: str
) -> None:
    claude.faults.append(Fault(status=status, headers={"retry-after": "7"}))
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert caught.value.status_code == status
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == error_type  # type: ignore[index]
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", status)


async def _bad_gateway(_request: Request) -> Response:
    return Response(b"<html>502 Bad Gateway</html>", status_code=502, media_type="text/html")


def test_a_teacher_error_that_is_not_anthropics_shape_gets_it(
    make_settings: Callable[..., Settings], start_proxy: Callable[..., RunningProxy], sdk: Sdk
) -> None:
    server = ServerThread(Starlette(routes=[Route("/v1/messages", _bad_gateway, methods=["POST"])]))
    proxy = start_proxy(make_settings(anthropic_url=server.start().url))
    try:
        with pytest.raises(anthropic.APIStatusError) as caught:
            sdk(proxy).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    finally:
        server.stop()
    assert caught.value.status_code == 502
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert "502 Bad Gateway" in caught.value.body["error"]["message"]  # type: ignore[index]


def test_an_error_event_mid_stream_reaches_the_sdk_and_is_an_error_exchange(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    claude.faults.append(StreamError(after=3))
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        sdk(proxy).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream,
    ):
        stream.until_done()
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "error"


def anthropic_error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    return body["error"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": MODEL, "max_tokens": "64", "messages": MESSAGES}).encode(), ""),
        (json.dumps({"model": MODEL, "max_tokens": 64, "stream": "yes"}).encode(), ""),
    ],
)
def test_stillrooms_own_errors_are_anthropic_shaped(
    proxy: RunningProxy, claude: FakeAnthropic, content: bytes, problem: str
) -> None:
    response = httpx.post(
        proxy.url + "/v1/messages",
        content=content,
        headers={"x-api-key": "sk-ant-client", "content-type": "application/json"},
    )
    assert response.status_code == 400
    error = anthropic_error(response)
    assert error["type"] == "invalid_request_error"
    assert problem in error["message"]
    assert claude.requests == []


def test_an_unreachable_teacher_is_an_anthropic_shaped_502(
    make_settings: Callable[..., Settings], start_proxy: Callable[..., RunningProxy], sdk: Sdk
) -> None:
    proxy = start_proxy(make_settings(anthropic_url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk(proxy).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_a_server_held_key_checks_the_clients_x_api_key(
    make_settings: Callable[..., Settings], start_proxy: Callable[..., RunningProxy], sdk: Sdk
) -> None:
    claude = FakeAnthropic(api_key="sk-ant-server")
    server = ServerThread(claude.app).start()
    try:
        proxy = start_proxy(
            make_settings(
                anthropic_url=server.url, anthropic_api_key="sk-ant-server", api_keys="sk-proxy"
            )
        )
        message = sdk(proxy, "sk-proxy").messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES
        )
        assert message.content
        assert claude.message_requests()[0].headers["x-api-key"] == "sk-ant-server"
        with pytest.raises(anthropic.AuthenticationError) as caught:
            sdk(proxy, "sk-wrong").messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        assert len(claude.message_requests()) == 1, "refused before the teacher"
        by_header = httpx.post(
            proxy.url + "/v1/messages",
            json={"model": MODEL, "max_tokens": 64, "messages": MESSAGES},
            headers={"x-api-key": "sk-proxy", "anthropic-version": API_VERSION},
        )
        assert by_header.status_code == 200, by_header.text
        assert [r.headers["x-api-key"] for r in claude.message_requests()] == ["sk-ant-server"] * 2
        assert "authorization" not in claude.message_requests()[0].headers
    finally:
        server.stop()


# --- a teacher whose stream breaks ----------------------------------------------------------

BROKEN_STREAM = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_broken",'
    b'"type":"message","role":"assistant","model":"claude-haiku-4-5","content":[],'
    b'"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


async def _broken(_request: Request) -> Response:
    async def events() -> AsyncIterator[bytes]:
        for event in BROKEN_STREAM:
            yield event

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def broken_teacher() -> Iterator[str]:
    server = ServerThread(Starlette(routes=[Route("/v1/messages", _broken, methods=["POST"])]))
    yield server.start().url
    server.stop()


def test_a_malformed_stream_event_ends_the_stream_and_is_not_a_training_pair(
    broken_teacher: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(anthropic_url=broken_teacher))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 64, "messages": MESSAGES, "stream": True},
        headers={"x-api-key": "sk-ant-client", "anthropic-version": API_VERSION},
    ) as response:
        body = response.read()
    assert b"message_stop" not in body, "nothing relayed after the malformed event"
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\n")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert "teacher sent an event that does not fit" in error["error"]["message"]
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "error"
    assert exchange.finish_reason is None


def test_a_stream_the_teacher_cuts_ends_with_an_error_the_sdk_raises_and_is_aborted(
    proxy: RunningProxy, claude: FakeAnthropic, sdk: Sdk
) -> None:
    claude.faults.append(Fault(cut_after=3))
    with (
        pytest.raises(anthropic.APIStatusError, match="stopped sending"),
        sdk(proxy).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream,
    ):
        stream.until_done()
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "aborted"
