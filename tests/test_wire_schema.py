"""The OpenAI schema checker accepts what the real API sends and rejects what it would not;
the fake teacher and the fake vLLM, checked by it and by the openai SDK's own types, speak
the wire format."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk
from openai.types.shared import ErrorObject

from fakes.teacher import FakeTeacher, Fault
from fakes.vllm import BASE_MODEL, FakeVllm
from openapi.extract import REF_PREFIX, ROOT_SCHEMAS, iter_refs, load_openapi, select_schemas
from wire_schema import (
    SCHEMAS_PATH,
    load_schemas,
    validate,
    validate_chat_chunk,
    validate_chat_completion,
    validate_embeddings,
    validate_error,
    validate_models_list,
    validate_sse_stream,
)

if TYPE_CHECKING:
    from pathlib import Path

# Samples shaped like what api.openai.com returns today.


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4.1-2025-04-14",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I assist you today?",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_50cad350e4",
    }


def tool_call_completion() -> dict[str, Any]:
    body = chat_completion()
    body["choices"][0] = {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                }
            ],
            "refusal": None,
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    return body


def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-BDwQGbLbJ6xQ3iZ7pLv1zNRBc6bDh",
        "object": "chat.completion.chunk",
        "created": 1742580292,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_b8bc95a0ac",
        "choices": choices,
        "usage": usage,
        "obfuscation": "Qn3",
    }


def choice_delta(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def first_chunk() -> dict[str, Any]:
    return chunk([choice_delta({"role": "assistant", "content": "", "refusal": None})])


def usage_only_chunk() -> dict[str, Any]:
    return chunk([], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})


def error_body() -> dict[str, Any]:
    return {
        "error": {
            "message": "Invalid value for 'temperature': must be between 0 and 2.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def sse(*events: object) -> bytes:
    parts = [e if isinstance(e, str) else json.dumps(e) for e in events]
    return "".join(f"data: {part}\n\n" for part in parts).encode()


# Accepted.


def test_chat_completion_with_refusal_annotations_and_usage_details_is_accepted() -> None:
    validate_chat_completion(chat_completion())


def test_chat_completion_with_token_logprobs_is_accepted() -> None:
    body = chat_completion()
    token = {"token": "Hello", "logprob": -0.31, "bytes": [72, 101, 108, 108, 111]}
    body["choices"][0]["logprobs"] = {
        "content": [{**token, "top_logprobs": [token]}],
        "refusal": None,
    }
    validate_chat_completion(body)


def test_tool_call_completion_with_null_content_is_accepted() -> None:
    validate_chat_completion(tool_call_completion())


def test_null_system_fingerprint_is_accepted() -> None:
    body = chat_completion()
    body["system_fingerprint"] = None
    validate_chat_completion(body)


def test_first_stream_chunk_with_role_and_empty_content_is_accepted() -> None:
    validate_chat_chunk(first_chunk())


def test_stream_chunk_with_null_finish_reason_logprobs_and_usage_is_accepted() -> None:
    validate_chat_chunk(chunk([choice_delta({"content": "Hello"})], usage=None))


def test_final_stream_chunk_with_empty_delta_and_finish_reason_is_accepted() -> None:
    validate_chat_chunk(chunk([choice_delta({}, finish_reason="stop")]))


def test_stream_chunks_with_tool_call_deltas_are_accepted() -> None:
    opening = {
        "index": 0,
        "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    validate_chat_chunk(
        chunk([choice_delta({"role": "assistant", "content": None, "tool_calls": [opening]})])
    )
    follow_up = {"index": 0, "function": {"arguments": '{"location":'}}
    validate_chat_chunk(chunk([choice_delta({"tool_calls": [follow_up]})]))


def test_usage_only_final_chunk_with_empty_choices_is_accepted() -> None:
    validate_chat_chunk(usage_only_chunk())


def test_error_with_null_param_and_code_is_accepted() -> None:
    validate_error(error_body())


def test_models_list_is_accepted() -> None:
    validate_models_list(
        {
            "object": "list",
            "data": [
                {
                    "id": "gpt-4o-mini",
                    "object": "model",
                    "created": 1721172741,
                    "owned_by": "system",
                }
            ],
        }
    )


def test_embeddings_response_is_accepted() -> None:
    validate_embeddings(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.00932]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )


# Rejected.


def test_chat_completion_without_choices_is_rejected() -> None:
    body = chat_completion()
    del body["choices"]
    with pytest.raises(AssertionError, match=r"\$: 'choices' is a required property"):
        validate_chat_completion(body)


def test_choice_without_logprobs_is_rejected() -> None:
    body = chat_completion()
    del body["choices"][0]["logprobs"]
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]: 'logprobs' is a required"):
        validate_chat_completion(body)


def test_message_without_refusal_is_rejected() -> None:
    body = chat_completion()
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match=r"\.message: 'refusal' is a required property"):
        validate_chat_completion(body)


def test_tool_call_message_without_content_is_rejected() -> None:
    body = tool_call_completion()
    del body["choices"][0]["message"]["content"]
    with pytest.raises(AssertionError, match=r"\.message: 'content' is a required property"):
        validate_chat_completion(body)


def test_chunk_object_on_a_chat_completion_is_rejected() -> None:
    body = chat_completion()
    body["object"] = "chat.completion.chunk"
    with pytest.raises(AssertionError, match=r"\$\.object: 'chat.completion.chunk' is not one"):
        validate_chat_completion(body)


def test_stream_chunk_without_finish_reason_is_rejected() -> None:
    body = chunk([{"index": 0, "delta": {"content": "Hi"}}])
    with pytest.raises(AssertionError, match=r"'finish_reason' is a required property"):
        validate_chat_chunk(body)


def test_stream_chunk_with_unknown_finish_reason_is_rejected() -> None:
    body = chunk([choice_delta({}, finish_reason="eos")])
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason: 'eos'"):
        validate_chat_chunk(body)


def test_usage_without_total_tokens_is_rejected() -> None:
    body = usage_only_chunk()
    del body["usage"]["total_tokens"]
    with pytest.raises(AssertionError, match=r"'total_tokens' is a required property"):
        validate_chat_chunk(body)


def test_error_without_message_is_rejected() -> None:
    body = error_body()
    del body["error"]["message"]
    with pytest.raises(AssertionError, match=r"\$\.error: 'message' is a required property"):
        validate_error(body)


def test_error_without_param_and_code_is_rejected() -> None:
    body = {"error": {"message": "boom", "type": "server_error"}}
    with pytest.raises(AssertionError, match=r"'param' is a required") as caught:
        validate_error(body)
    assert "'code' is a required property" in str(caught.value)


def test_error_with_integer_code_is_rejected() -> None:
    body = error_body()
    body["error"]["code"] = 400
    with pytest.raises(AssertionError, match=r"\$\.error\.code: 400 is not valid"):
        validate_error(body)


def test_fastapi_detail_body_is_rejected_as_error() -> None:
    with pytest.raises(AssertionError, match=r"'error' is a required property"):
        validate_error({"detail": "Not Found"})


def test_model_without_owned_by_is_rejected() -> None:
    body = {"object": "list", "data": [{"id": "m", "object": "model", "created": 1}]}
    with pytest.raises(AssertionError, match=r"\$\.data\[0\]: 'owned_by' is a required"):
        validate_models_list(body)


def test_embeddings_without_usage_is_rejected() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
        "model": "m",
    }
    with pytest.raises(AssertionError, match=r"'usage' is a required property"):
        validate_embeddings(body)


def test_rejection_lists_every_error_with_its_path() -> None:
    body = chat_completion()
    del body["id"]
    body["choices"][0]["index"] = "0"
    with pytest.raises(AssertionError, match=r"\(2 problems\)") as caught:
        validate_chat_completion(body)
    message = str(caught.value)
    assert "$: 'id' is a required property" in message
    assert "$.choices[0].index: '0' is not of type 'integer'" in message


def test_nullable_mismatch_explains_the_non_null_branch_only() -> None:
    body = chunk([choice_delta({}, finish_reason="eos")])
    with pytest.raises(AssertionError) as caught:
        validate_chat_chunk(body)
    message = str(caught.value)
    assert "'eos' is not one of ['stop', 'length'" in message
    assert "is not of type 'null'" not in message


def test_unknown_schema_name_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no schema 'ChatCompletion'"):
        validate("ChatCompletion", {})


# Streams.


def test_sse_stream_returns_its_chunks_in_order() -> None:
    last = chunk([choice_delta({}, finish_reason="stop")])
    body = sse(first_chunk(), last, usage_only_chunk(), "[DONE]")
    assert validate_sse_stream(body) == [first_chunk(), last, usage_only_chunk()]


def test_sse_stream_with_crlf_comments_and_no_space_after_colon_is_accepted() -> None:
    body = (
        ": keep-alive\r\n\r\n"
        + f"data:{json.dumps(first_chunk())}\r\n\r\n"
        + "data: [DONE]\r\n\r\n"
    ).encode()
    assert validate_sse_stream(body) == [first_chunk()]


def test_sse_stream_ending_in_error_event_without_done_is_accepted() -> None:
    chunks = validate_sse_stream(sse(first_chunk(), error_body()))
    assert chunks[-1] == error_body()


def test_sse_stream_without_done_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"does not end with data: \[DONE\]"):
        validate_sse_stream(sse(first_chunk()))


def test_sse_stream_with_invalid_chunk_is_rejected() -> None:
    bad = first_chunk()
    del bad["created"]
    with pytest.raises(AssertionError, match=r"event 2 does not match .*\n  \$: 'created'"):
        validate_sse_stream(sse(first_chunk(), bad, "[DONE]"))


def test_sse_stream_with_invalid_error_event_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"event 2 does not match OpenAI schema ErrorResp"):
        validate_sse_stream(sse(first_chunk(), {"error": "upstream timed out"}))


def test_sse_stream_with_event_after_done_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"event 3 comes after \[DONE\]"):
        validate_sse_stream(sse(first_chunk(), "[DONE]", first_chunk()))


def test_sse_stream_with_chunk_after_error_event_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"event 2 comes after an error event"):
        validate_sse_stream(sse(error_body(), first_chunk(), "[DONE]"))


def test_sse_stream_with_unterminated_last_event_is_rejected() -> None:
    body = sse(first_chunk()) + b"data: [DONE]\n"
    with pytest.raises(AssertionError, match=r"last event is not terminated by a blank line"):
        validate_sse_stream(body)


def test_sse_stream_with_non_json_data_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"event 1 is not JSON"):
        validate_sse_stream(sse("Hello", "[DONE]"))


def test_sse_stream_with_only_done_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"stream carries no JSON events"):
        validate_sse_stream(sse("[DONE]"))


def test_empty_sse_stream_is_rejected() -> None:
    with pytest.raises(AssertionError, match=r"stream is empty"):
        validate_sse_stream(b"")


# The vendored schemas themselves.


def test_vendored_schemas_are_valid_draft_2020_12() -> None:
    for schema in load_schemas().values():
        Draft202012Validator.check_schema(schema)


def test_a_schema_that_nests_itself_is_checked_at_every_depth() -> None:
    """``CompoundFilter`` refers to itself the Draft 2019-09 way; the loader spells that
    as a plain ``$ref``, so a nested filter is still checked."""
    leaf = {"type": "eq", "key": "team", "value": "support"}
    validate(
        "CompoundFilter", {"type": "and", "filters": [leaf, {"type": "or", "filters": [leaf]}]}
    )
    with pytest.raises(AssertionError, match="filters"):
        validate("CompoundFilter", {"type": "and", "filters": [{"type": "or", "filters": "x"}]})


def test_openapi_nullable_keyword_is_translated_away() -> None:
    assert "nullable" in SCHEMAS_PATH.read_text(encoding="utf-8")
    assert '"nullable"' not in json.dumps(load_schemas())


def test_vendored_schemas_hold_the_roots_and_every_schema_they_reference() -> None:
    schemas = json.loads(SCHEMAS_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    assert set(ROOT_SCHEMAS) <= set(schemas)
    for ref in iter_refs(schemas):
        assert ref.startswith(REF_PREFIX)
        assert ref.removeprefix(REF_PREFIX) in schemas


def test_extractor_follows_refs_transitively_and_skips_the_rest() -> None:
    everything = {
        "A": {"$ref": "#/components/schemas/B"},
        "B": {"properties": {"c": {"items": {"$ref": "#/components/schemas/C"}}}},
        "C": {"type": "string"},
        "Unused": {"type": "integer"},
    }
    assert set(select_schemas(everything, ("A",))) == {"A", "B", "C"}


def test_extractor_reads_yaml_scalars_the_yaml_1_2_way(tmp_path: Path) -> None:
    source = tmp_path / "openapi.yaml"
    source.write_text("enum: [on, off, yes]\ndate: 2024-01-01\nflag: true\n")
    document = load_openapi(source)
    assert document == {"enum": ["on", "off", "yes"], "date": "2024-01-01", "flag": True}
    assert yaml.safe_load(source.read_text())["enum"] == [True, False, True]


# The fakes speak the wire format.

MESSAGES = [
    {"role": "system", "content": "Route the ticket."},
    {"role": "user", "content": "My parcel is late"},
]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("track", "notify")
]
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "t", "schema": {"properties": {"queue": {"type": "string"}}}},
}
REQUESTS = {
    "plain": {},
    "n_and_logprobs": {"n": 2, "logprobs": True, "top_logprobs": 2},
    "tools": {"tools": TOOLS},
    "json_schema": {"response_format": JSON_SCHEMA},
    "usage": {"stream_options": {"include_usage": True}},
}


async def post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://fake") as client:
        return await client.post(path, json=body)


async def ask_teacher(teacher: FakeTeacher, **body: Any) -> httpx.Response:
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    return await post(teacher.app, "/v1/chat/completions", request)


@pytest.mark.parametrize("extra", list(REQUESTS.values()), ids=list(REQUESTS))
async def test_fake_teacher_answer_matches_the_schema_and_the_sdk(extra: dict[str, Any]) -> None:
    response = await ask_teacher(FakeTeacher(), **extra)
    body = response.json()
    validate_chat_completion(body)
    parsed = SdkCompletion.model_validate(body)
    assert len(parsed.choices) == extra.get("n", 1)
    if "logprobs" in extra:
        assert all(choice.logprobs is not None for choice in parsed.choices)


@pytest.mark.parametrize("extra", list(REQUESTS.values()), ids=list(REQUESTS))
async def test_fake_teacher_stream_matches_the_schema_and_the_sdk(extra: dict[str, Any]) -> None:
    teacher = FakeTeacher()
    whole = (await ask_teacher(teacher, **extra)).json()
    response = await ask_teacher(teacher, **extra, stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = [SdkChunk.model_validate(event) for event in validate_sse_stream(response.content)]
    for choice in whole["choices"]:
        pieces = [
            c.choices[0] for c in chunks if c.choices and c.choices[0].index == choice["index"]
        ]
        assert "".join(p.delta.content or "" for p in pieces) == (
            choice["message"]["content"] or ""
        )
        assert pieces[-1].finish_reason == choice["finish_reason"]
    if "stream_options" in extra:
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == whole["usage"]["total_tokens"]


async def test_fake_teacher_error_matches_the_schema_and_the_sdk() -> None:
    teacher = FakeTeacher()
    teacher.faults.append(Fault(status=429))
    response = await ask_teacher(teacher)
    assert response.status_code == 429
    validate_error(response.json())
    assert ErrorObject.model_validate(response.json()["error"]).code == "rate_limit_exceeded"


async def test_fake_vllm_answer_and_stream_are_read_by_the_sdk() -> None:
    """vLLM's answers are not OpenAI's to the letter (null where OpenAI leaves a field
    out), so only the SDK judges them."""
    vllm = FakeVllm()
    body = {"model": BASE_MODEL, "messages": MESSAGES, "logprobs": True}
    whole = (await post(vllm.app, "/v1/chat/completions", body)).json()
    assert "refusal" not in whole["choices"][0]["logprobs"], "vLLM's logprobs: content only"
    assert whole["choices"][0]["message"]["annotations"] is None
    completion = SdkCompletion.model_validate(whole)
    assert completion.choices[0].message.content == vllm.default_answer
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    response = await post(vllm.app, "/v1/chat/completions", stream)
    frames = response.content.decode().split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""]
    chunks = [SdkChunk.model_validate_json(frame.removeprefix("data: ")) for frame in frames[:-2]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        vllm.default_answer
    )
    assert chunks[-1].usage == completion.usage
