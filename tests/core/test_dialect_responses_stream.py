"""The Responses API's stream: a student's answer as the events OpenAI sends (checked by
the OpenAPI description and read by the openai SDK's own stream reader), and a teacher's
stream put back together into the response it streamed."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response as SdkResponse

from core.dialects.errors import DialectError
from core.dialects.responses import (
    ResponseStreamAssembler,
    chat_completion,
    response_events,
    response_object,
)

from fakes.dialect_samples import (
    RESPONSES_WEATHER_TOOL,
    responses_answer,
    responses_request,
    responses_tool_answer,
)
from wire_schema import validate_response_stream

# The stream of a student's answer.


def frames(events: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(event.split(b"data: ", 1)[1]) for event in events]


@pytest.fixture
def sdk_serving() -> Iterator[Any]:
    """An openai SDK client whose server answers every request with the body given."""
    served: list[tuple[bytes, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        content, kind = served[0]
        return httpx2.Response(200, content=content, headers={"content-type": kind})

    http = openai.DefaultHttpxClient(transport=httpx2.MockTransport(handler))
    client = openai.OpenAI(
        api_key="unused", base_url="http://student.invalid/v1", http_client=http, max_retries=0
    )

    def serve(content: bytes, kind: str = "text/event-stream") -> openai.OpenAI:
        served[:] = [(content, kind)]
        return client

    yield serve
    client.close()


@pytest.mark.parametrize(
    "answer", [responses_answer("a billing question, clearly"), responses_tool_answer()]
)
def test_the_stream_of_an_answer_matches_the_schema_event_by_event(answer: dict[str, Any]) -> None:
    response = response_object(
        answer,
        responses_request(input="hi", tools=[RESPONSES_WEATHER_TOOL]),
        response_id="resp_s7",
        created_at=1,
    )
    events = validate_response_stream(b"".join(response_events(response)))
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-1] == "response.completed"
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []


def test_text_comes_in_several_deltas_that_add_up_to_it() -> None:
    text = "The customer was charged twice for one order"
    response = response_object(
        responses_answer(text), responses_request(input="hi"), response_id="resp_s8", created_at=1
    )
    deltas = [
        e["delta"]
        for e in frames(response_events(response))
        if e["type"] == "response.output_text.delta"
    ]
    assert len(deltas) > 1
    assert "".join(deltas) == text


@pytest.mark.parametrize(
    "answer", [responses_answer("billing, by the look of it"), responses_tool_answer()]
)
def test_the_sdk_stream_reader_ends_with_the_non_streamed_response(
    sdk_serving: Any, answer: dict[str, Any]
) -> None:
    body = responses_request(input="hi", tools=[RESPONSES_WEATHER_TOOL])
    response = response_object(answer, body, response_id="resp_s9", created_at=1)
    client = sdk_serving(b"".join(response_events(response)))
    with client.responses.stream(model="gpt-4.1-mini", input="hi") as stream:
        seen = [event.type for event in stream]
        final = stream.get_final_response()
    assert seen[-1] == "response.completed"
    # The stream reader's response adds ``parsed: None`` to each part and call.
    whole = SdkResponse.model_validate(response).to_dict(exclude_none=True)
    assert final.to_dict(exclude_none=True) == whole
    assert final.output_text == SdkResponse.model_validate(response).output_text


def test_the_sdk_reads_a_plain_response_and_a_raw_stream(sdk_serving: Any) -> None:
    response = response_object(
        responses_answer(), responses_request(input="hi"), response_id="resp_s10", created_at=1
    )
    plain = sdk_serving(json.dumps(response).encode(), "application/json")
    assert plain.responses.create(model="gpt-4.1-mini", input="hi").output_text == "billing"
    raw = sdk_serving(b"".join(response_events(response)))
    events = list(raw.responses.create(model="gpt-4.1-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "billing"


# A teacher's stream put back together.


def assembled(events: list[dict[str, Any]]) -> ResponseStreamAssembler:
    assembler = ResponseStreamAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def student_stream(
    answer: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    response = response_object(
        answer or responses_tool_answer(),
        responses_request(input="hi"),
        response_id="resp_t1",
        created_at=5,
    )
    return response, frames(response_events(response))


@pytest.mark.parametrize("answer", [responses_answer("billing"), responses_tool_answer()])
def test_a_whole_stream_assembles_into_the_non_streamed_response(answer: dict[str, Any]) -> None:
    response, events = student_stream(answer)
    assembler = assembled(events)
    assert assembler.status == "ok"
    assert assembler.result() == response


def test_output_is_rebuilt_from_the_deltas_when_the_final_event_has_none() -> None:
    response, events = student_stream(responses_answer("billing and refunds"))
    events[-1] = copy.deepcopy(events[-1])
    events[-1]["response"]["output"] = []
    result = assembled(events).result()
    assert result is not None
    assert result["output"] == response["output"]
    assert chat_completion(result)["choices"][0]["message"]["content"] == "billing and refunds"


def test_a_failed_response_or_an_error_event_is_an_error() -> None:
    _response, events = student_stream()
    failed = copy.deepcopy(events[-1])
    failed["type"] = "response.failed"
    failed["response"]["status"] = "failed"
    failed["response"]["error"] = {"code": "server_error", "message": "boom"}
    assert assembled([*events[:-1], failed]).status == "error"
    error = {
        "type": "error",
        "code": "server_error",
        "message": "boom",
        "param": None,
        "sequence_number": 99,
    }
    stopped = assembled([*events[:4], error])
    assert stopped.status == "error"
    assert stopped.result() is None


def test_a_stream_that_ends_without_its_final_event_is_aborted() -> None:
    _, events = student_stream()
    assembler = assembled(events[:-1])
    assert assembler.status == "aborted"
    assert assembler.result() is None


def test_events_of_built_in_tools_are_taken_without_changing_the_answer() -> None:
    response, events = student_stream(responses_answer("billing"))
    searching = {
        "type": "response.web_search_call.searching",
        "output_index": 0,
        "item_id": "ws_1",
        "sequence_number": 2,
    }
    shifted = [
        *events[:2],
        searching,
        *({**e, "sequence_number": e["sequence_number"] + 1} for e in events[2:]),
    ]
    assert assembled(shifted).result() == response


@pytest.mark.parametrize(
    "broken",
    [
        lambda events: [{"choices": []}],
        lambda events: [{"type": "chat.completion.chunk"}],
        lambda events: [events[2]],
        lambda events: [*events, events[-1]],
        lambda events: [*events[:2], {**events[4], "output_index": 7}],
        lambda events: [events[0], events[1], events[1]],
        lambda events: [*events[:2], {**events[2], "item": None}],
    ],
    ids=[
        "no type",
        "a chat chunk",
        "delta before response.created",
        "event after the end",
        "delta for an item never opened",
        "sequence number repeated",
        "item added without an item",
    ],
)
def test_a_malformed_or_out_of_order_event_raises(broken: Any) -> None:
    _, events = student_stream()
    *before, last = broken(events)
    assembler = assembled(before)
    with pytest.raises(DialectError):
        assembler.feed(last)
