"""The fake teachers speak the published wire formats, over a real server: the fake
OpenAI teacher's ``/v1/responses`` (whole and streamed) as OpenAI's OpenAPI description
and the openai SDK read it; the fake Anthropic API as the anthropic SDK reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import ErrorResponse as AnthropicErrorResponse
from openai.types.responses import Response as SdkResponse
from pydantic import BaseModel

from core.dialects.messages import MessageStreamAssembler
from core.dialects.responses import ResponseStreamAssembler, chat_completion

from fakes.anthropic import API_VERSION, FakeAnthropic, StreamError
from fakes.teacher import FakeTeacher, Fault
from servers import ServerThread
from wire_schema import validate_error, validate_response, validate_response_stream

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "track_parcel",
        "description": "Where a parcel is",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]
REQUESTS: dict[str, dict[str, Any]] = {
    "text": {"input": "My parcel is late"},
    "items": {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "My parcel is late"}]}
        ]
    },
    "tools": {"input": "My parcel is late", "tools": TOOLS},
    "json_schema": {
        "input": "My parcel is late",
        "text": {
            "format": {
                "type": "json_schema",
                "name": "ticket",
                "schema": {"type": "object", "properties": {"queue": {"type": "string"}}},
            }
        },
    },
}


def ask(**body: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "instructions": "Route the ticket.", **body}


def client(teacher: FakeTeacher) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=teacher.url + "/v1", max_retries=0)


@pytest.mark.parametrize("extra", list(REQUESTS.values()), ids=list(REQUESTS))
def test_fake_teacher_response_matches_the_schema_and_the_sdk(
    teacher: FakeTeacher, extra: dict[str, Any]
) -> None:
    answer = httpx.post(teacher.url + "/v1/responses", json=ask(**extra))
    assert answer.status_code == 200
    body = answer.json()
    validate_response(body)
    parsed = SdkResponse.model_validate(body)
    assert parsed.status == "completed"
    kinds = [item.type for item in parsed.output]
    assert kinds == (["function_call"] if "tools" in extra else ["message"])


@pytest.mark.parametrize("extra", list(REQUESTS.values()), ids=list(REQUESTS))
def test_fake_teacher_stream_matches_the_schema_and_ends_with_the_stored_response(
    teacher: FakeTeacher, extra: dict[str, Any]
) -> None:
    answer = httpx.post(teacher.url + "/v1/responses", json=ask(**extra, stream=True))
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = validate_response_stream(answer.content)
    final = events[-1]["response"]
    assert final == teacher.responses[final["id"]]
    assembler = ResponseStreamAssembler()
    for event in events:
        assembler.feed(event)
    assert assembler.status == "ok"
    assert assembler.result() == final


def test_the_sdk_streams_a_fake_answer_to_the_text_it_answers_whole(
    teacher: FakeTeacher,
) -> None:
    sdk = client(teacher)
    whole = sdk.responses.create(model="gpt-4.1-mini", input="My parcel is late")
    with sdk.responses.stream(model="gpt-4.1-mini", input="My parcel is late") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert whole.output_text == "Answer to: My parcel is late"
    assert "".join(deltas) == final.output_text == whole.output_text


def test_the_sdk_parses_a_fake_structured_answer(teacher: FakeTeacher) -> None:
    class Ticket(BaseModel):
        queue: str

    parsed = client(teacher).responses.parse(
        model="gpt-4.1-mini", input="My parcel is late", text_format=Ticket
    )
    assert parsed.output_parsed == Ticket(queue="value of queue")


def test_a_fake_tool_call_reads_as_the_chat_tool_call(teacher: FakeTeacher) -> None:
    body = httpx.post(teacher.url + "/v1/responses", json=ask(**REQUESTS["tools"])).json()
    call = chat_completion(body)["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "track_parcel"
    assert json.loads(call["function"]["arguments"]) == {"query": "My parcel is late"}


def test_a_fake_teacher_keeps_its_responses_until_deleted(teacher: FakeTeacher) -> None:
    sdk = client(teacher)
    created = sdk.responses.create(model="gpt-4.1-mini", input="hello")
    assert sdk.responses.retrieve(created.id).output_text == created.output_text
    sdk.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(created.id)


def test_a_queued_fault_is_an_openai_error_the_sdk_raises(teacher: FakeTeacher) -> None:
    teacher.faults.append(Fault(status=429, headers={"retry-after": "2"}))
    answer = httpx.post(teacher.url + "/v1/responses", json=ask(input="hi"))
    assert answer.status_code == 429
    assert answer.headers["retry-after"] == "2"
    validate_error(answer.json())
    teacher.faults.append(Fault(status=500))
    with pytest.raises(openai.InternalServerError):
        client(teacher).responses.create(model="gpt-4.1-mini", input="hi")


def feed_stream(url: str, body: dict[str, Any], assembler: ResponseStreamAssembler) -> None:
    with httpx.stream("POST", url + "/v1/responses", json=body) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: "):
                assembler.feed(json.loads(line.removeprefix("data: ")))


def test_a_cut_stream_assembles_to_nothing(teacher: FakeTeacher) -> None:
    teacher.faults.append(Fault(cut_after=5))
    assembler = ResponseStreamAssembler()
    with pytest.raises(httpx.HTTPError):
        feed_stream(teacher.url, ask(input="hi", stream=True), assembler)
    assert assembler.status == "aborted"
    assert assembler.result() is None


def test_a_body_openai_would_refuse_is_a_400_in_its_shape(teacher: FakeTeacher) -> None:
    answer = httpx.post(teacher.url + "/v1/responses", json={"input": "no model"})
    assert answer.status_code == 400
    validate_error(answer.json())
    assert answer.json()["error"]["param"] == "model"


def test_the_stream_checker_refuses_a_stream_without_its_end(teacher: FakeTeacher) -> None:
    answer = httpx.post(teacher.url + "/v1/responses", json=ask(input="hi", stream=True))
    events = answer.content.split(b"\n\n")
    with pytest.raises(AssertionError, match="must end once"):
        validate_response_stream(b"\n\n".join(events[:-2]) + b"\n\n")


# The fake Anthropic API, read by the anthropic SDK.

WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather at a place",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
CACHED_SYSTEM = [
    {"type": "text", "text": "You route support tickets to one of five queues, briefly."},
    {"type": "text", "text": "Answer with the queue.", "cache_control": {"type": "ephemeral"}},
]
TURNS: list[Any] = [{"role": "user", "content": "My parcel is late"}]


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    fake = FakeAnthropic()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def claude(fake_anthropic: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(api_key="sk-ant-test", base_url=fake_anthropic.url, max_retries=0)
    yield client
    client.close()


def test_fake_anthropic_answers_a_message_the_sdk_reads(
    fake_anthropic: FakeAnthropic, claude: anthropic.Anthropic
) -> None:
    reply = claude.messages.create(
        model="claude-sonnet-4-5", max_tokens=128, system="Route the ticket.", messages=TURNS
    )
    assert reply.type == "message"
    assert reply.id.startswith("msg_")
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "Answer to: My parcel is late"
    assert reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens > 0
    sent = fake_anthropic.message_requests()[0].headers
    # The SDK sends its key as x-api-key or as a bearer token, depending on its version.
    key = sent.get("x-api-key") or sent["authorization"].removeprefix("Bearer ")
    assert key == "sk-ant-test"
    assert sent["anthropic-version"]


def test_fake_anthropic_streams_what_it_answers_whole(claude: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 128, "messages": TURNS}
    whole = claude.messages.create(**ask)
    with claude.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert whole.content[0].type == "text"
    assert text == whole.content[0].text
    # The stream reader's blocks add ``parsed_output: None``.
    assert final.to_dict(exclude_none=True)["content"] == whole.to_dict()["content"]
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_fake_anthropic_calls_tools_with_input_streamed_as_json_pieces(
    fake_anthropic: FakeAnthropic, claude: anthropic.Anthropic
) -> None:
    ask: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 128, "messages": TURNS}
    with claude.messages.stream(**ask, tools=[WEATHER]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    assert final.stop_reason == "tool_use"
    tool_use = final.content[0]
    assert tool_use.type == "tool_use"
    assert tool_use.input == {"query": "My parcel is late"}
    raw = httpx.post(
        fake_anthropic.url + "/v1/messages",
        json={**ask, "tools": [WEATHER], "stream": True},
        headers={"x-api-key": "k", "anthropic-version": API_VERSION},
    )
    assembler = MessageStreamAssembler()
    for block in raw.text.strip().split("\n\n"):
        head, data = block.split("\ndata: ", 1)
        assembler.feed(head.removeprefix("event: "), json.loads(data))
    assert assembler.status == "ok"
    result = assembler.result()
    assert result is not None
    assert result["content"][0]["input"] == {"query": "My parcel is late"}


def test_a_cached_system_prompt_is_written_once_then_read(claude: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "system": CACHED_SYSTEM,
        "messages": TURNS,
    }
    first = claude.messages.create(**ask).usage
    second = claude.messages.create(**ask).usage
    assert first.cache_creation_input_tokens
    assert not first.cache_read_input_tokens
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.input_tokens == first.input_tokens


def test_count_tokens_counts_what_the_message_usage_says(claude: anthropic.Anthropic) -> None:
    ask: dict[str, Any] = {"model": "claude-sonnet-4-5", "system": CACHED_SYSTEM, "messages": TURNS}
    counted = claude.messages.count_tokens(**ask).input_tokens
    usage = claude.messages.create(**ask, max_tokens=64).usage
    assert counted == usage.input_tokens + (usage.cache_creation_input_tokens or 0)


def test_fake_anthropic_wants_a_key_and_an_api_version(fake_anthropic: FakeAnthropic) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": TURNS}
    url = fake_anthropic.url + "/v1/messages"
    no_key = httpx.post(url, json=body, headers={"anthropic-version": API_VERSION})
    no_version = httpx.post(url, json=body, headers={"x-api-key": "k"})
    assert no_key.status_code == 401
    assert AnthropicErrorResponse.model_validate(no_key.json()).error.type == "authentication_error"
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]
    bearer = httpx.post(
        url, json=body, headers={"authorization": "Bearer k", "anthropic-version": API_VERSION}
    )
    assert bearer.status_code == 200


def test_fake_anthropic_refuses_a_body_anthropic_would(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=8,
            messages=[{"role": "system", "content": "x"}],
        )
    assert raised.value.status_code == 400


@pytest.mark.parametrize(
    ("status", "error", "kind"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
    ],
)
def test_fake_anthropic_errors_are_the_sdks_exceptions_with_retry_after(
    fake_anthropic: FakeAnthropic,
    claude: anthropic.Anthropic,
    status: int,
    error: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    fake_anthropic.faults.append(Fault(status=status))
    with pytest.raises(error) as raised:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=TURNS)
    assert raised.value.status_code == status
    assert AnthropicErrorResponse.model_validate(raised.value.body).error.type == kind
    if status in (429, 529):
        assert raised.value.response.headers["retry-after"] == "1"


def test_an_error_event_mid_stream_is_raised_by_the_sdk(
    fake_anthropic: FakeAnthropic, claude: anthropic.Anthropic
) -> None:
    fake_anthropic.faults.append(StreamError(after=4))
    ask: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 128, "messages": TURNS}
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        list(claude.messages.create(**ask, stream=True))
