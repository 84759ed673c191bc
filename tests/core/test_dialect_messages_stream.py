"""Anthropic's Messages stream: a student's answer as the events Anthropic sends (read by
the anthropic SDK's own stream reader, which must assemble exactly the message), and a
teacher's stream put back together."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types import Message as SdkMessage

from core.dialects.errors import DialectError
from core.dialects.messages import (
    MessageStreamAssembler,
    error_body,
    message_events,
    message_object,
)

from fakes.dialect_samples import messages_answer, messages_request, messages_tool_answer

# The stream of a student's answer.


def frames(events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for event in events:
        head, data = event.split(b"\ndata: ", 1)
        parsed.append((head.decode().removeprefix("event: "), json.loads(data)))
    return parsed


@pytest.fixture
def sdk_serving() -> Iterator[Any]:
    """An anthropic SDK client whose server answers every request with the body given."""
    served: list[tuple[bytes, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        content, kind = served[0]
        return httpx2.Response(200, content=content, headers={"content-type": kind})

    http = anthropic.DefaultHttpxClient(transport=httpx2.MockTransport(handler))
    client = anthropic.Anthropic(
        api_key="unused", base_url="http://student.invalid", http_client=http, max_retries=0
    )

    def serve(content: bytes, kind: str = "text/event-stream") -> anthropic.Anthropic:
        served[:] = [(content, kind)]
        return client

    yield serve
    client.close()


def test_the_stream_opens_and_closes_as_anthropics_does() -> None:
    message = message_object(messages_tool_answer(), messages_request(), message_id="msg_s6")
    events = frames(message_events(message))
    assert [name for name, _ in events][:2] == ["message_start", "ping"]
    assert [name for name, _ in events][-2:] == ["message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"]) == ([], None)
    pieces = [
        d["delta"]["partial_json"]
        for _, d in events
        if d.get("delta", {}).get("type") == "input_json_delta"
    ]
    assert len(pieces) > 2
    assert json.loads("".join(pieces)) == {"city": "Paris", "days": 2}


@pytest.mark.parametrize(
    "answer", [messages_answer("billing, by the look of it"), messages_tool_answer()]
)
def test_the_sdk_stream_reader_assembles_exactly_the_message(
    sdk_serving: Any, answer: dict[str, Any]
) -> None:
    message = message_object(answer, messages_request(), message_id="msg_s7")
    client = sdk_serving(b"".join(message_events(message)))
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=256, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == (answer["choices"][0]["message"]["content"] or "")
    assert final.to_dict(exclude_none=True) == SdkMessage.model_validate(message).to_dict(
        exclude_none=True
    )


def test_the_sdk_reads_a_plain_message(sdk_serving: Any) -> None:
    message = message_object(messages_answer(), messages_request(), message_id="msg_s8")
    client = sdk_serving(json.dumps(message).encode(), "application/json")
    reply = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=256, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "billing"


# A teacher's stream put back together.


def assembled(events: list[tuple[str, dict[str, Any]]]) -> MessageStreamAssembler:
    assembler = MessageStreamAssembler()
    for name, data in events:
        assembler.feed(name, data)
    return assembler


@pytest.mark.parametrize("answer", [messages_answer("billing"), messages_tool_answer()])
def test_a_whole_stream_assembles_into_the_message(answer: dict[str, Any]) -> None:
    message = message_object(answer, messages_request(), message_id="msg_t1")
    assembler = assembled(frames(message_events(message)))
    assert assembler.status == "ok"
    assert assembler.result() == message


def test_the_final_usage_counts_come_from_message_delta() -> None:
    message = message_object(messages_answer(), messages_request(), message_id="msg_t2")
    events = frames(message_events(message))
    name, delta = events[-2]
    delta = copy.deepcopy(delta)
    delta["usage"] = {"output_tokens": 40}  # an older API version: output tokens only
    result = assembled([*events[:-2], (name, delta), events[-1]]).result()
    assert result is not None
    assert result["usage"]["output_tokens"] == 40
    assert result["usage"]["cache_read_input_tokens"] == 1024


def test_an_error_event_is_an_error_and_a_stream_without_message_stop_is_aborted() -> None:
    events = frames(
        message_events(message_object(messages_answer(), messages_request(), message_id="msg_t3"))
    )
    overloaded = error_body(529, "Overloaded")
    failed = assembled([*events[:4], ("error", overloaded)])
    assert (failed.status, failed.result()) == ("error", None)
    cut = assembled(events[:-1])
    assert (cut.status, cut.result()) == ("aborted", None)


def test_unknown_but_well_formed_events_are_passed_over() -> None:
    message = message_object(messages_answer(), messages_request(), message_id="msg_t4")
    events = frames(message_events(message))
    later = ("content_block_future", {"type": "content_block_future", "index": 0})
    assert assembled([*events[:3], later, *events[3:]]).result() == message


@pytest.mark.parametrize(
    "broken",
    [
        lambda events: [("message_start", {"choices": []})],
        lambda events: [("message_start", events[2][1])],
        lambda events: [events[2]],
        lambda events: [*events, events[-1]],
        lambda events: [events[0], ("content_block_delta", {**events[3][1], "index": 5})],
        lambda events: [events[0], events[0]],
        lambda events: [
            *events[:3],
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{"},
                },
            ),
        ],
        lambda events: [
            *events[:-4],
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        ],
    ],
    ids=[
        "no type",
        "event name and type differ",
        "block before message_start",
        "event after message_stop",
        "delta for a block never started",
        "message_start twice",
        "json delta on a text block",
        "tool input that is no json",
    ],
)
def test_a_malformed_or_out_of_order_event_raises(broken: Any) -> None:
    events = frames(
        message_events(
            message_object(messages_tool_answer(), messages_request(), message_id="msg_t5")
        )
    )
    *before, (name, data) = broken(events)
    assembler = assembled(before)
    with pytest.raises(DialectError):
        assembler.feed(name, data)
