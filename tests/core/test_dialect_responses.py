"""The Responses API read into Chat Completions and written back: a request's chat view,
a teacher's response as a chat.completion, a student's chat.completion as the response
OpenAI would return (checked by the OpenAPI description and the openai SDK), its event
stream (parsed by the SDK's own stream reader) and a teacher's stream put back together."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response as SdkResponse

from core.dialects.errors import DialectError
from core.dialects.responses import (
    TEACHER_ONLY_REASONS,
    chat_completion,
    chat_request,
    response_object,
    teacher_only,
)
from core.wire import ChatCompletionRequest

from fakes.dialect_samples import (
    RESPONSES_WEATHER_TOOL,
    responses_answer,
    responses_request,
    responses_tool_answer,
)
from wire_schema import validate_response


def teacher_response() -> dict[str, Any]:
    """Shaped like what api.openai.com returns for a text answer today."""
    return {
        "id": "resp_68af4030592c81938ec0a5fbab4a3e9f05438e46b5f69a3b",
        "object": "response",
        "created_at": 1756315696,
        "status": "completed",
        "background": False,
        "completed_at": 1756315697,
        "error": None,
        "incomplete_details": None,
        "instructions": "Classify the ticket.",
        "max_output_tokens": None,
        "model": "gpt-4.1-mini-2025-04-14",
        "output": [
            {
                "id": "msg_68af40337e4c8193b6ab0c8d3f4e8fd105438e46b5f69a3b",
                "type": "message",
                "status": "completed",
                "content": [
                    {"type": "output_text", "annotations": [], "logprobs": [], "text": "billing"}
                ],
                "role": "assistant",
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 1200,
            "input_tokens_details": {"cached_tokens": 1024},
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 1203,
        },
        "user": None,
        "metadata": {},
    }


def teacher_call_response() -> dict[str, Any]:
    response = teacher_response()
    response["output"] = [
        {
            "id": "fc_68af4035b4c08193",
            "type": "function_call",
            "status": "completed",
            "arguments": '{"city":"Paris"}',
            "call_id": "call_Dd0mO9pD3xa9XTPN",
            "name": "get_weather",
        }
    ]
    return response


# A request's chat view.


def test_instructions_are_the_system_message_and_a_string_input_the_user_turn() -> None:
    chat = chat_request(responses_request(input="My card was charged twice"))
    assert chat["model"] == "gpt-4.1-mini"
    assert chat["messages"] == [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": "My card was charged twice"},
    ]


def test_input_items_become_turns_with_tool_calls_and_their_results() -> None:
    items = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Paris?"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "noon"},
    ]
    chat = chat_request(responses_request(input=items))
    assert chat["messages"][1:] == [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    ChatCompletionRequest.model_validate(chat)


def test_a_function_call_with_no_assistant_text_opens_an_assistant_message() -> None:
    items = [
        {"role": "user", "content": "Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
    ]
    assistant = chat_request(responses_request(input=items))["messages"][-1]
    assert assistant["role"] == "assistant"
    assert assistant["content"] is None
    assert [call["id"] for call in assistant["tool_calls"]] == ["call_1"]


def test_images_and_several_text_parts_stay_chat_content_parts() -> None:
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "low"},
    ]
    user = chat_request(responses_request(input=[{"role": "user", "content": content}]))[
        "messages"
    ][-1]
    assert user["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
    ]


def test_function_tools_become_chat_tools_and_built_in_ones_are_left_out() -> None:
    chat = chat_request(
        responses_request(input="hi", tools=[RESPONSES_WEATHER_TOOL, {"type": "web_search"}])
    )
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather at a place",
                "parameters": RESPONSES_WEATHER_TOOL["parameters"],
                "strict": False,
            },
        }
    ]


@pytest.mark.parametrize(
    ("given", "chat"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
        (
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
            {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                },
            },
        ),
    ],
)
def test_tool_choice_is_written_the_chat_way(given: Any, chat: Any) -> None:
    view = chat_request(
        responses_request(input="hi", tools=[RESPONSES_WEATHER_TOOL], tool_choice=given)
    )
    assert view["tool_choice"] == chat


def test_a_json_schema_text_format_becomes_the_response_format() -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}}
    text = {"format": {"type": "json_schema", "name": "ticket", "schema": schema, "strict": True}}
    chat = chat_request(responses_request(input="hi", text=text))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "ticket", "schema": schema, "strict": True},
    }


def test_json_object_is_kept_and_plain_text_asks_for_no_response_format() -> None:
    as_json = chat_request(responses_request(input="hi", text={"format": {"type": "json_object"}}))
    as_text = chat_request(responses_request(input="hi", text={"format": {"type": "text"}}))
    assert as_json["response_format"] == {"type": "json_object"}
    assert "response_format" not in as_text


def test_sampling_and_bookkeeping_parameters_carry_over() -> None:
    chat = chat_request(
        responses_request(
            input="hi",
            temperature=0.2,
            top_p=0.9,
            max_output_tokens=64,
            user="u-7",
            metadata={"team": "support"},
            parallel_tool_calls=False,
            stream=True,
        )
    )
    assert {key: chat[key] for key in chat if key not in ("model", "messages")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "user": "u-7",
        "metadata": {"team": "support"},
        "parallel_tool_calls": False,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "hi"}, "model"),
        (responses_request(input="hi", stream="yes"), "stream"),
        (responses_request(input="hi", temperature="hot"), "temperature"),
        (responses_request(input=3), "input"),
        (responses_request(input=["hi"]), "input[0]"),
        (responses_request(input=[{"role": "tool", "content": "x"}]), "input[0].role"),
        (
            responses_request(input=[{"type": "function_call", "name": "f", "arguments": "{}"}]),
            "input[0].call_id",
        ),
        (
            responses_request(input=[{"role": "user", "content": [{"type": "audio_blob"}]}]),
            "input[0].content[0].type",
        ),
        (responses_request(input="hi", tools=[{"type": "function"}]), "tools[0].name"),
        (responses_request(input="hi", tool_choice="sometimes"), "tool_choice"),
    ],
)
def test_a_body_openai_would_refuse_is_a_400_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(DialectError) as raised:
        chat_request(body)
    assert raised.value.status_code == 400
    assert raised.value.param is not None
    assert raised.value.param.startswith(param)


# What only the teacher can answer.


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"tools": [RESPONSES_WEATHER_TOOL, {"type": "web_search_preview"}]}, "builtin_tool"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "builtin_tool"),
        ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "builtin_tool"),
        ({"background": True}, "background"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "reasoning_items"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "server_items"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "server_items",
        ),
        ({"conversation": "conv_123"}, "conversation"),
        ({"prompt": {"id": "pmpt_1", "version": "2"}}, "prompt_template"),
        ({"include": ["file_search_call.results"]}, "server_include"),
    ],
)
def test_what_needs_openai_side_state_or_tools_is_the_teachers(
    changes: dict[str, Any], reason: str
) -> None:
    assert teacher_only(responses_request(**{"input": "hi", **changes})) == reason
    assert reason in TEACHER_ONLY_REASONS


def test_a_plain_request_with_function_tools_a_student_can_answer() -> None:
    body = responses_request(
        input="hi", tools=[RESPONSES_WEATHER_TOOL], include=["message.output_text.logprobs"]
    )
    assert teacher_only(body) is None
    assert teacher_only(responses_request(input="hi", previous_response_id="resp_1")) is None


# A teacher's response as a chat.completion.


def test_a_teachers_text_response_reads_as_a_chat_completion() -> None:
    chat = chat_completion(teacher_response())
    assert chat["object"] == "chat.completion"
    assert chat["model"] == "gpt-4.1-mini-2025-04-14"
    assert chat["choices"][0]["message"]["content"] == "billing"
    assert chat["choices"][0]["finish_reason"] == "stop"
    assert chat["usage"]["prompt_tokens"] == 1200
    assert chat["usage"]["completion_tokens"] == 3
    assert chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 1024


def test_a_teachers_function_calls_read_as_tool_calls_with_the_call_id() -> None:
    message = chat_completion(teacher_call_response())["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    assert message["message"]["tool_calls"] == [
        {
            "id": "call_Dd0mO9pD3xa9XTPN",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]


@pytest.mark.parametrize(
    ("status", "reason", "finish"),
    [
        ("incomplete", "max_output_tokens", "length"),
        ("incomplete", "content_filter", "content_filter"),
        ("failed", None, "length"),
    ],
)
def test_a_response_that_did_not_complete_is_never_a_stop(
    status: str, reason: str | None, finish: str
) -> None:
    response = teacher_response()
    response["status"] = status
    response["incomplete_details"] = {"reason": reason} if reason else None
    assert chat_completion(response)["choices"][0]["finish_reason"] == finish


# A student's chat.completion as a response object.


def test_a_students_text_answer_is_a_response_openai_would_send() -> None:
    body = responses_request(input="hi", temperature=0.3, max_output_tokens=50, metadata={"a": "b"})
    response = response_object(
        responses_answer(), body, response_id="resp_student1", created_at=1_760_000_000
    )
    validate_response(response)
    parsed = SdkResponse.model_validate(response)
    assert parsed.id == "resp_student1"
    assert parsed.status == "completed"
    assert parsed.output_text == "billing"
    assert str(parsed.output[0].id).startswith("msg_")
    assert (parsed.model, parsed.instructions, parsed.temperature) == (
        "gpt-4.1-mini",
        "Classify the ticket.",
        0.3,
    )
    assert (parsed.max_output_tokens, parsed.metadata) == (50, {"a": "b"})
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        31,
        2,
        33,
    )


def test_a_students_tool_calls_are_function_call_items() -> None:
    body = responses_request(input="Paris and Oslo?", tools=[RESPONSES_WEATHER_TOOL])
    response = response_object(responses_tool_answer(), body, response_id="resp_s2", created_at=1)
    validate_response(response)
    parsed = SdkResponse.model_validate(response)
    calls = [item for item in parsed.output if item.type == "function_call"]
    assert [(call.call_id, call.name, call.arguments) for call in calls] == [
        ("call_a1", "get_weather", '{"city":"Paris"}'),
        ("call_b2", "get_weather", '{"city":"Oslo"}'),
    ]
    assert all(call.id and call.id.startswith("fc_") for call in calls)
    assert parsed.tools[0].type == "function"
    assert parsed.tools[0].name == "get_weather"


def test_an_answer_cut_at_max_tokens_is_an_incomplete_response() -> None:
    cut = responses_answer("bill")
    cut["choices"][0]["finish_reason"] = "length"
    response = response_object(
        cut, responses_request(input="hi"), response_id="resp_s3", created_at=1
    )
    validate_response(response)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


def test_a_students_answer_reads_back_as_the_same_chat_completion() -> None:
    for answer in (responses_answer(), responses_tool_answer()):
        response = response_object(
            answer, responses_request(input="hi"), response_id="resp_s4", created_at=1
        )
        again = chat_completion(response)
        assert (
            again["choices"][0]["message"]["content"] == answer["choices"][0]["message"]["content"]
        )
        assert again["choices"][0]["message"].get("tool_calls") == answer["choices"][0][
            "message"
        ].get("tool_calls")
        assert again["choices"][0]["finish_reason"] == answer["choices"][0]["finish_reason"]
        assert again["usage"]["prompt_tokens"] == answer["usage"]["prompt_tokens"]


def test_the_same_answer_is_written_with_the_same_item_ids() -> None:
    first = response_object(
        responses_answer(), responses_request(input="hi"), response_id="resp_s5", created_at=1
    )
    second = response_object(
        responses_answer(), responses_request(input="hi"), response_id="resp_s5", created_at=1
    )
    other = response_object(
        responses_answer(), responses_request(input="hi"), response_id="resp_s6", created_at=1
    )
    assert first == second
    assert first["output"][0]["id"] != other["output"][0]["id"]
