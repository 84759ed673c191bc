"""Server-sent events from the teacher: cut into events, reassembled into one answer."""

from __future__ import annotations

import json
from typing import Any

from proxy.gateway.streaming import EventSplitter, StreamAssembler, event_data

from wire_schema import validate_chat_chunk, validate_chat_completion

HEAD = {
    "id": "chatcmpl-42",
    "object": "chat.completion.chunk",
    "created": 1735732800,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_42",
    "service_tier": "default",
}
USAGE = {
    "prompt_tokens": 21,
    "completion_tokens": 4,
    "total_tokens": 25,
    "prompt_tokens_details": {"cached_tokens": 0},
}
DONE = b"data: [DONE]\n\n"


def choice(
    index: int = 0, *, finish: str | None = None, logprobs: Any = None, **delta: Any
) -> dict[str, Any]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def chunk(*choices: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**HEAD, "choices": list(choices), **fields}


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def assemble(
    events: list[bytes], *, strip_usage: bool = False
) -> tuple[StreamAssembler, list[bytes]]:
    """Feed every event; return the assembler and what it forwarded."""
    assembler = StreamAssembler(strip_usage=strip_usage)
    forwarded = [out for out in map(assembler.add, events) if out is not None]
    return assembler, forwarded


def token(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}


PLAIN_STREAM = [
    event(chunk(choice(role="assistant", content="", refusal=None))),
    event(chunk(choice(content="Billing"))),
    event(chunk(choice(content=" question"))),
    event(chunk(choice(finish="stop"))),
    DONE,
]


def with_usage(events: list[bytes]) -> list[bytes]:
    """The stream as the proxy gets it: usage last, since it asks the teacher for it."""
    return [*events[:-1], event(chunk(usage=USAGE)), DONE]


# EventSplitter.


def test_splitter_joins_an_event_split_across_feeds() -> None:
    splitter = EventSplitter()

    assert splitter.feed(b'data: {"a"') == []
    assert splitter.feed(b": 1}\n") == []
    assert splitter.feed(b"\n") == [b'data: {"a": 1}\n\n']


def test_splitter_returns_several_events_of_one_feed() -> None:
    events = EventSplitter().feed(b"data: 1\n\ndata: 2\n\n: keep-alive\n\n")

    assert events == [b"data: 1\n\n", b"data: 2\n\n", b": keep-alive\n\n"]


def test_splitter_cuts_on_crlf_separators() -> None:
    splitter = EventSplitter()

    events = splitter.feed(b"data: 1\r\n\r\ndata: 2\r\n") + splitter.feed(b"\r\n")

    assert events == [b"data: 1\r\n\r\n", b"data: 2\r\n\r\n"]
    assert splitter.pending == b""


def test_splitter_keeps_a_trailing_partial_event_pending() -> None:
    splitter = EventSplitter()

    events = splitter.feed(b"data: 1\n\ndata: 2\n")

    assert events == [b"data: 1\n\n"]
    assert splitter.pending == b"data: 2\n"


def test_splitter_forwards_every_byte_it_was_fed() -> None:
    stream = b"".join(PLAIN_STREAM) + b"data: cut"
    splitter = EventSplitter()

    events = [e for start in range(0, len(stream), 5) for e in splitter.feed(stream[start:][:5])]

    assert b"".join(events) + splitter.pending == stream
    assert events == [*PLAIN_STREAM]


# event_data.


def test_event_data_is_the_data_field() -> None:
    assert event_data(b'data: {"a": 1}\n\n') == b'{"a": 1}'


def test_event_data_joins_multi_line_data() -> None:
    assert event_data(b"data: first\ndata: second\n\n") == b"first\nsecond"


def test_event_data_takes_data_without_a_space_after_the_colon() -> None:
    assert event_data(b"data:[DONE]\r\n\r\n") == b"[DONE]"


def test_event_data_ignores_other_fields() -> None:
    assert event_data(b"event: message\nid: 7\ndata: x\n\n") == b"x"


def test_event_data_of_a_comment_is_none() -> None:
    assert event_data(b": keep-alive\n\n") is None


# StreamAssembler: the answer a non-streamed call would have returned.


def test_assembler_rebuilds_content() -> None:
    assembler, _ = assemble(with_usage(PLAIN_STREAM))

    completion = assembler.completion()

    validate_chat_completion(completion)
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Billing question",
        "refusal": None,
    }


def test_assembler_keeps_id_created_model_and_fingerprint_of_the_stream() -> None:
    assembler, _ = assemble(PLAIN_STREAM)

    completion = assembler.completion()

    assert completion["id"] == "chatcmpl-42"
    assert completion["object"] == "chat.completion"
    assert completion["created"] == 1735732800
    assert completion["model"] == "gpt-4o-mini-2024-07-18"
    assert completion["system_fingerprint"] == "fp_42"
    assert completion["service_tier"] == "default"


def test_assembler_forwards_events_unchanged() -> None:
    _, forwarded = assemble(PLAIN_STREAM)

    assert forwarded == PLAIN_STREAM


def test_assembler_keeps_finish_reason() -> None:
    assembler, _ = assemble(PLAIN_STREAM)

    assert assembler.finish_reason == "stop"
    assert assembler.completion()["choices"][0]["finish_reason"] == "stop"


def test_assembler_rebuilds_a_refusal() -> None:
    assembler, _ = assemble(
        [
            event(chunk(choice(role="assistant", content=None, refusal=""))),
            event(chunk(choice(refusal="I can't"))),
            event(chunk(choice(refusal=" help with that."))),
            event(chunk(choice(finish="stop"))),
            DONE,
        ]
    )

    message = assembler.completion()["choices"][0]["message"]

    assert message["content"] is None
    assert message["refusal"] == "I can't help with that."


def test_assembler_merges_two_parallel_tool_calls_interleaved() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"index": index, **fields}

    assembler, _ = assemble(
        [
            event(chunk(choice(role="assistant", content=None))),
            event(
                chunk(
                    choice(
                        tool_calls=[
                            call(0, id="call_a", type="function", function={"name": "lookup"})
                        ]
                    )
                )
            ),
            event(
                chunk(
                    choice(
                        tool_calls=[
                            call(1, id="call_b", type="function", function={"name": "refund"})
                        ]
                    )
                )
            ),
            event(chunk(choice(tool_calls=[call(0, function={"arguments": '{"q": '})]))),
            event(chunk(choice(tool_calls=[call(1, function={"arguments": '{"id": 7'})]))),
            event(chunk(choice(tool_calls=[call(0, function={"arguments": '"card"}'})]))),
            event(chunk(choice(tool_calls=[call(1, function={"arguments": "}"})]))),
            event(chunk(choice(finish="tool_calls"))),
            event(chunk(usage=USAGE)),
            DONE,
        ]
    )

    completion = assembler.completion()

    validate_chat_completion(completion)
    assert completion["choices"][0]["message"]["content"] is None
    assert completion["choices"][0]["message"]["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": "card"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "refund", "arguments": '{"id": 7}'},
        },
    ]
    assert assembler.finish_reason == "tool_calls"


def test_assembler_collects_logprobs_as_a_non_streamed_answer_has_them() -> None:
    first, second = token("Billing", -0.01), token(" question", -0.25)
    assembler, _ = assemble(
        [
            event(
                chunk(
                    choice(role="assistant", content="", logprobs={"content": [], "refusal": None})
                )
            ),
            event(chunk(choice(content="Billing", logprobs={"content": [first], "refusal": None}))),
            event(
                chunk(choice(content=" question", logprobs={"content": [second], "refusal": None}))
            ),
            event(chunk(choice(finish="stop"))),
            event(chunk(usage=USAGE)),
            DONE,
        ]
    )

    completion = assembler.completion()

    assert completion["choices"][0]["logprobs"] == {"content": [first, second], "refusal": None}
    validate_chat_completion(completion)


def test_assembled_completion_of_a_stream_without_usage_matches_the_schema() -> None:
    assembler, _ = assemble(PLAIN_STREAM)

    validate_chat_completion(assembler.completion())


def test_assembler_without_logprobs_gives_null_logprobs() -> None:
    assembler, _ = assemble(PLAIN_STREAM)

    assert assembler.completion()["choices"][0]["logprobs"] is None


def test_assembler_records_usage() -> None:
    assembler, _ = assemble(
        [
            event(chunk(choice(role="assistant", content="Yes"), usage=None)),
            event(chunk(choice(finish="stop"), usage=None)),
            event(chunk(usage=USAGE)),
            DONE,
        ]
    )

    assert assembler.usage == USAGE
    assert assembler.completion()["usage"] == USAGE


def test_assembler_rebuilds_interleaved_choices_of_n_2() -> None:
    assembler, _ = assemble(
        [
            event(chunk(choice(0, role="assistant", content=""))),
            event(chunk(choice(1, role="assistant", content=""))),
            event(chunk(choice(1, content="Second"))),
            event(chunk(choice(0, content="First"))),
            event(chunk(choice(0, content=" answer"))),
            event(chunk(choice(1, content=" answer"))),
            event(chunk(choice(1, finish="length"))),
            event(chunk(choice(0, finish="stop"))),
            event(chunk(usage=USAGE)),
            DONE,
        ]
    )

    completion = assembler.completion()

    validate_chat_completion(completion)
    assert [c["index"] for c in completion["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in completion["choices"]] == [
        "First answer",
        "Second answer",
    ]
    assert [c["finish_reason"] for c in completion["choices"]] == ["stop", "length"]


# strip_usage: the proxy asked for usage the client did not.


USAGE_STREAM = [
    event(chunk(choice(role="assistant", content=""), usage=None)),
    event(chunk(choice(content="Yes"), usage=None)),
    event(chunk(choice(finish="stop"), usage=None)),
    event(chunk(usage=USAGE)),
    DONE,
]


def test_strip_usage_drops_the_usage_only_chunk() -> None:
    _, forwarded = assemble(USAGE_STREAM, strip_usage=True)

    assert len(forwarded) == len(USAGE_STREAM) - 1
    assert forwarded[-1] == DONE


def test_strip_usage_removes_usage_null_from_other_chunks() -> None:
    _, forwarded = assemble(USAGE_STREAM, strip_usage=True)

    for out in forwarded[:-1]:
        data = event_data(out)
        assert data is not None
        payload = json.loads(data)
        assert "usage" not in payload
        validate_chat_chunk(payload)
        assert out.endswith(b"\n\n")


def test_strip_usage_still_records_usage() -> None:
    assembler, _ = assemble(USAGE_STREAM, strip_usage=True)

    assert assembler.usage == USAGE
    assert assembler.completion()["choices"][0]["message"]["content"] == "Yes"


def test_strip_usage_leaves_chunks_without_usage_untouched() -> None:
    _, forwarded = assemble(PLAIN_STREAM, strip_usage=True)

    assert forwarded == PLAIN_STREAM


def test_strip_usage_removes_usage_sent_on_a_chunk_with_choices() -> None:
    assembler, forwarded = assemble(
        [event(chunk(choice(content="Yes", finish="stop"), usage=USAGE)), DONE],
        strip_usage=True,
    )

    data = event_data(forwarded[0])
    assert data is not None
    assert "usage" not in json.loads(data)
    assert assembler.usage == USAGE


# How the stream ended.


def test_stream_ending_with_done_is_done() -> None:
    assembler, _ = assemble(PLAIN_STREAM)

    assert assembler.done is True
    assert assembler.error is None


def test_stream_without_done_is_not_done() -> None:
    assembler, _ = assemble(PLAIN_STREAM[:-1])

    assert assembler.done is False


def test_error_event_is_recorded_and_forwarded() -> None:
    error = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    events = [*PLAIN_STREAM[:2], event(error)]

    assembler, forwarded = assemble(events)

    assert assembler.error == error
    assert forwarded == events


def test_comments_are_forwarded_and_ignored() -> None:
    events = [b": keep-alive\n\n", *PLAIN_STREAM]

    assembler, forwarded = assemble(events)

    assert forwarded == events
    assert assembler.completion()["choices"][0]["message"]["content"] == "Billing question"


def test_event_that_is_not_json_is_forwarded_as_it_came_and_flagged_malformed() -> None:
    events = [*PLAIN_STREAM[:2], b"data: {not json\n\n", *PLAIN_STREAM[2:]]

    assembler, forwarded = assemble(events)

    assert forwarded == events
    assert assembler.malformed == b"{not json"


def test_event_whose_json_is_not_an_object_is_malformed() -> None:
    assembler, _ = assemble([*PLAIN_STREAM[:2], b"data: 42\n\n"])

    assert assembler.malformed == b"42"


def test_well_formed_stream_is_not_malformed() -> None:
    assembler, _ = assemble([b": keep-alive\n\n", *PLAIN_STREAM])

    assert assembler.malformed is None
