"""What stillroom answers, built from core.wire, is what OpenAI's OpenAPI description
allows and what the openai SDK parses: whole answers, streams (chunk by chunk and
reassembled by the SDK) and error bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk
from openai.types.shared import ErrorObject

from core.errors import NotFoundError, TeacherTimeoutError
from core.wire import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    CompletionTokensDetails,
    Delta,
    ErrorBody,
    FunctionCall,
    PromptTokensDetails,
    TokenLogprob,
    ToolCall,
    TopLogprob,
    Usage,
    completion_chunks,
    sse,
)

from wire_schema import validate_chat_chunk, validate_chat_completion, validate_error
from wire_schema import validate_sse_stream as validate_stream

MESSAGES: list[Any] = [{"role": "user", "content": "Where is my parcel?"}]


def logprobs() -> ChoiceLogprobs:
    alternatives = [TopLogprob.of("ship", -0.2), TopLogprob.of("ref", -1.9)]
    return ChoiceLogprobs(
        content=[TokenLogprob.of("ship", -0.2, alternatives), TokenLogprob.of("ping", -0.05)]
    )


def answer(**changes: Any) -> ChatCompletion:
    return ChatCompletion.from_text(
        "shipping", model="gpt-4o-mini", **{"usage": Usage.of(12, 2), **changes}
    )


def tool_call_answer() -> ChatCompletion:
    calls = [
        ToolCall(id="call_0", function=FunctionCall(name="track", arguments='{"id": 7}')),
        ToolCall(id="call_1", function=FunctionCall(name="notify", arguments="{}")),
    ]
    message = AssistantMessage(content=None, tool_calls=calls)
    return ChatCompletion(
        id="chatcmpl-tools",
        created=1_700_000_000,
        model="gpt-4o-mini",
        choices=[Choice(index=0, message=message, finish_reason="tool_calls")],
        usage=Usage.of(20, 9),
    )


def body(completion: ChatCompletion) -> dict[str, Any]:
    return completion.model_dump(mode="json")


def stream(completion: ChatCompletion, *, include_usage: bool = False) -> bytes:
    chunks = completion_chunks(completion, include_usage=include_usage)
    return b"".join(sse(chunk) for chunk in chunks) + SSE_DONE


@pytest.fixture
def sdk_serving() -> Iterator[Any]:
    """An openai SDK client whose server answers every request with the stream given (on
    the SDK's own HTTP client, ``httpx2``)."""
    served: list[bytes] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx2.Response(200, content=served[0], headers=headers)

    http = openai.DefaultHttpxClient(transport=httpx2.MockTransport(handler))
    client = openai.OpenAI(
        api_key="unused", base_url="http://student.invalid/v1", http_client=http, max_retries=0
    )

    def serve(content: bytes) -> openai.OpenAI:
        served[:] = [content]
        return client

    yield serve
    client.close()


# Whole answers.


def test_answer_from_text_matches_the_schema_and_the_sdk() -> None:
    sent = body(answer())
    validate_chat_completion(sent)
    parsed = SdkCompletion.model_validate(sent)
    assert parsed.choices[0].message.content == "shipping"
    assert parsed.choices[0].finish_reason == "stop"
    assert parsed.usage is not None
    assert (parsed.usage.prompt_tokens, parsed.usage.total_tokens) == (12, 14)
    assert sent["id"].startswith("chatcmpl-")


def test_answer_sends_the_nulls_openai_sends_and_leaves_out_what_it_omits() -> None:
    sent = body(ChatCompletion.from_text("hi", model="m", id="chatcmpl-1", created=1))
    assert sent == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "hi",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
    }


def test_logprobs_with_alternatives_match_the_schema_and_the_sdk() -> None:
    sent = body(answer(logprobs=logprobs()))
    validate_chat_completion(sent)
    parsed = SdkCompletion.model_validate(sent).choices[0].logprobs
    assert parsed is not None
    assert parsed.content is not None
    assert [t.token for t in parsed.content] == ["ship", "ping"]
    assert bytes(parsed.content[0].bytes or []) == b"ship"
    assert [t.logprob for t in parsed.content[0].top_logprobs] == [-0.2, -1.9]
    assert parsed.refusal is None
    assert sent["choices"][0]["logprobs"]["refusal"] is None


def test_tool_call_answer_has_null_content_and_matches_the_sdk() -> None:
    sent = body(tool_call_answer())
    validate_chat_completion(sent)
    assert sent["choices"][0]["message"]["content"] is None
    calls = SdkCompletion.model_validate(sent).choices[0].message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [  # type: ignore[union-attr]
        ("call_0", "track"),
        ("call_1", "notify"),
    ]


def test_usage_details_match_the_schema_and_the_sdk() -> None:
    usage = Usage.of(100, 10)
    usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=64)
    usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=0)
    sent = body(answer(usage=usage))
    validate_chat_completion(sent)
    assert sent["usage"]["prompt_tokens_details"] == {"cached_tokens": 64}
    parsed = SdkCompletion.model_validate(sent).usage
    assert parsed is not None
    assert parsed.prompt_tokens_details is not None
    assert parsed.prompt_tokens_details.cached_tokens == 64
    assert usage.cached_tokens == 64


def test_optional_fields_are_sent_when_given_even_as_null() -> None:
    completion = ChatCompletion.from_text("hi", model="m")
    assert "system_fingerprint" not in body(completion)
    completion.system_fingerprint = None
    assert body(completion)["system_fingerprint"] is None
    validate_chat_completion(body(completion))


def test_a_parsed_body_is_dumped_with_exactly_its_fields_and_extras() -> None:
    sent = body(answer(logprobs=logprobs()))
    sent["choices"][0]["stop_reason"] = None
    sent["service_tier"] = "default"
    assert ChatCompletion.model_validate(sent).model_dump(mode="json") == sent


# Streams.


def test_chunks_of_an_answer_form_a_valid_stream() -> None:
    completion = answer(logprobs=logprobs())
    events = validate_stream(stream(completion))
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "shipping"},
        {},
    ]
    assert events[1]["choices"][0]["logprobs"] == body(completion)["choices"][0]["logprobs"]
    assert [e["choices"][0]["finish_reason"] for e in events] == [None, None, "stop"]
    assert all("usage" not in e for e in events), "usage the client did not ask for"
    for event in events:
        validate_chat_chunk(event)
        assert SdkChunk.model_validate(event).id == completion.id


def test_stream_with_usage_says_null_until_the_usage_chunk() -> None:
    events = validate_stream(stream(answer(), include_usage=True))
    *content, last = events
    assert all(e["usage"] is None for e in content)
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
    usage = SdkChunk.model_validate(last).usage
    assert usage is not None
    assert usage.total_tokens == 14


def test_tool_call_stream_opens_with_null_content_and_matches_the_schema() -> None:
    events = validate_stream(stream(tool_call_answer()))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    calls = events[1]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "call_0", "track"),
        (1, "call_1", "notify"),
    ]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_sdk_reassembles_the_stream_into_the_answer(sdk_serving: Any) -> None:
    completion = answer(logprobs=logprobs())
    client = sdk_serving(stream(completion, include_usage=True))
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as events:
        final = events.get_final_completion()
    whole = SdkCompletion.model_validate(body(completion))
    assert final.id == completion.id
    assert final.choices[0].message.content == "shipping"
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].logprobs == whole.choices[0].logprobs
    assert final.usage == whole.usage


def test_the_sdk_reassembles_streamed_tool_calls(sdk_serving: Any) -> None:
    client = sdk_serving(stream(tool_call_answer()))
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as events:
        final = events.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_0", "track", '{"id": 7}'),
        ("call_1", "notify", "{}"),
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_the_sdk_iterates_the_stream_chunk_by_chunk(sdk_serving: Any) -> None:
    client = sdk_serving(stream(answer(), include_usage=True))
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "shipping"
    assert chunks[-1].usage is not None


def test_a_delta_sends_only_what_it_was_given() -> None:
    assert Delta(content="x").model_dump() == {"content": "x"}
    assert Delta(role="assistant", content=None, refusal=None).model_dump() == {
        "role": "assistant",
        "content": None,
        "refusal": None,
    }
    assert Delta().model_dump() == {}


def test_sse_frames_one_event_and_done() -> None:
    frame = sse(Delta(content="é"))
    assert frame == 'data: {"content":"é"}\n\n'.encode()
    assert SSE_DONE == b"data: [DONE]\n\n"


# Errors.


def test_error_body_matches_the_schema_and_the_sdk() -> None:
    error = ErrorBody.of("no such model", error_type="invalid_request_error", param="model")
    sent = error.model_dump()
    assert sent == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": None,
        }
    }
    validate_error(sent)
    assert ErrorObject.model_validate(sent["error"]).param == "model"


@pytest.mark.parametrize("error", [TeacherTimeoutError("slow"), NotFoundError("gone")])
def test_stillroom_errors_are_openai_error_bodies(error: Exception) -> None:
    assert isinstance(error, TeacherTimeoutError | NotFoundError)
    sent = error.to_body()
    validate_error(sent)
    assert ErrorObject.model_validate(sent["error"]).code == error.code


def test_an_error_event_ends_a_stream_and_the_sdk_raises_it(sdk_serving: Any) -> None:
    cut = ErrorBody.of("the teacher stopped", error_type="api_error", code="teacher_stream_cut")
    first = completion_chunks(answer(), include_usage=False)[0]
    content = sse(first) + sse(cut)
    events = validate_stream(content)
    assert events[-1] == json.loads(cut.model_dump_json())
    client = sdk_serving(content)
    with pytest.raises(openai.APIError, match="the teacher stopped"):
        list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
