"""Anthropic's Messages API read into Chat Completions and written back: a request's chat
view, a teacher's message as a chat.completion, a student's chat.completion as the message
Anthropic would return and its event stream (both read by the anthropic SDK), a teacher's
stream put back together, and errors in Anthropic's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import ErrorResponse as SdkErrorResponse
from anthropic.types import Message as SdkMessage

from core.dialects.errors import DialectError
from core.dialects.messages import (
    TEACHER_ONLY_REASONS,
    chat_completion,
    chat_request,
    error_body,
    message_object,
    teacher_only,
)
from core.wire import ChatCompletionRequest

from fakes.dialect_samples import (
    MESSAGES_WEATHER_TOOL,
    messages_answer,
    messages_request,
    messages_tool_answer,
)


def teacher_message() -> dict[str, Any]:
    """Shaped like what api.anthropic.com returns for a tool call today."""
    return {
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [
            {"type": "text", "text": "I'll check the weather."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"city": "San Francisco"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 2048,
            "output_tokens": 89,
            "service_tier": "standard",
        },
    }


# A request's chat view.


def test_the_system_prompt_is_the_system_message_and_string_turns_stay_strings() -> None:
    chat = chat_request(messages_request())
    assert chat["model"] == "claude-sonnet-4-5"
    assert chat["max_tokens"] == 256
    assert chat["messages"] == [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": "My card was charged twice"},
    ]


def test_system_text_blocks_are_joined_into_one_system_message() -> None:
    system = [
        {"type": "text", "text": "Classify the ticket."},
        {"type": "text", "text": "Answer with one word.", "cache_control": {"type": "ephemeral"}},
    ]
    chat = chat_request(messages_request(system=system))
    assert chat["messages"][0] == {
        "role": "system",
        "content": "Classify the ticket.\nAnswer with one word.",
    }


def test_tool_use_and_tool_result_blocks_become_tool_calls_and_tool_messages() -> None:
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "sunny"}],
                },
                {"type": "text", "text": "Thanks, and Oslo?"},
            ],
        },
    ]
    chat = chat_request(messages_request(messages=turns, tools=[MESSAGES_WEATHER_TOOL]))
    assert chat["messages"][1:] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "Thanks, and Oslo?"},
    ]
    ChatCompletionRequest.model_validate(chat)


def test_custom_tools_become_function_tools_and_server_tools_are_left_out() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    chat = chat_request(messages_request(tools=[MESSAGES_WEATHER_TOOL, search]))
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather at a place",
                "parameters": MESSAGES_WEATHER_TOOL["input_schema"],
            },
        }
    ]


@pytest.mark.parametrize(
    ("given", "chat"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather"},
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
    ],
)
def test_tool_choice_is_written_the_chat_way(given: dict[str, Any], chat: dict[str, Any]) -> None:
    view = chat_request(messages_request(tools=[MESSAGES_WEATHER_TOOL], tool_choice=given))
    assert {key: view[key] for key in chat} == chat


def test_sampling_stop_sequences_stream_and_user_carry_over() -> None:
    chat = chat_request(
        messages_request(
            temperature=0.2,
            top_p=0.9,
            stop_sequences=["END"],
            stream=True,
            metadata={"user_id": "u-7"},
        )
    )
    assert {key: chat[key] for key in chat if key not in ("model", "messages")} == {
        "max_tokens": 256,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-7",
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({key: v for key, v in messages_request().items() if key != "max_tokens"}, "max_tokens"),
        ({key: v for key, v in messages_request().items() if key != "model"}, "model"),
        (messages_request(messages=[]), "messages"),
        (messages_request(messages=[{"role": "system", "content": "x"}]), "messages.0.role"),
        (messages_request(stream="yes"), "stream"),
        (messages_request(temperature=1.5), "temperature"),
        (messages_request(messages=[{"role": "user", "content": 7}]), "messages.0"),
        (
            messages_request(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages.0.content.0.text",
        ),
        (
            messages_request(messages=[{"role": "user", "content": [{"type": "hologram"}]}]),
            "messages.0.content.0.type",
        ),
        (messages_request(tools=[{"name": "f"}]), "tools.0.input_schema"),
        (messages_request(tool_choice={"type": "maybe"}), "tool_choice.type"),
    ],
)
def test_a_body_anthropic_would_refuse_is_a_400_naming_the_field(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(DialectError) as raised:
        chat_request(body)
    assert raised.value.status_code == 400
    assert raised.value.param is not None
    assert raised.value.param.startswith(param)


# What only the teacher can answer.

IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {
                "tools": [
                    MESSAGES_WEATHER_TOOL,
                    {"type": "web_search_20250305", "name": "web_search"},
                ]
            },
            "server_tool",
        ),
        ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}, "server_tool"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "server_tool"),
        (
            {"tools": [{"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]},
            "server_tool",
        ),
        ({"tools": [{"type": "computer_20250124", "name": "computer"}]}, "server_tool"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
        (
            {"mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}]},
            "mcp_servers",
        ),
        ({"container": "container_011CN"}, "container"),
        (
            {"messages": [{"role": "user", "content": [IMAGE, {"type": "text", "text": "what?"}]}]},
            "media_input",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                            }
                        ],
                    }
                ]
            },
            "media_input",
        ),
    ],
)
def test_what_needs_anthropic_side_tools_or_features_is_the_teachers(
    changes: dict[str, Any], reason: str
) -> None:
    assert teacher_only(messages_request(**changes)) == reason
    assert reason in TEACHER_ONLY_REASONS


def test_a_plain_request_with_custom_tools_a_student_can_answer() -> None:
    custom = {**MESSAGES_WEATHER_TOOL, "type": "custom"}
    assert (
        teacher_only(
            messages_request(tools=[MESSAGES_WEATHER_TOOL, custom], thinking={"type": "disabled"})
        )
        is None
    )


# A teacher's message as a chat.completion.


def test_a_teachers_tool_use_message_reads_as_a_chat_completion() -> None:
    chat = chat_completion(teacher_message())
    choice = chat["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the weather."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "San Francisco"}'},
        }
    ]


def test_cache_reads_and_writes_count_in_the_prompt_and_reads_as_cached() -> None:
    usage = chat_completion(teacher_message())["usage"]
    assert usage["prompt_tokens"] == 472 + 100 + 2048
    assert usage["prompt_tokens_details"]["cached_tokens"] == 2048
    assert usage["completion_tokens"] == 89


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "length"),
    ],
)
def test_the_stop_reason_is_the_finish_reason(stop_reason: str, finish: str) -> None:
    message = teacher_message()
    message["content"] = [{"type": "text", "text": "billing"}]
    message["stop_reason"] = stop_reason
    assert chat_completion(message)["choices"][0]["finish_reason"] == finish


# A student's chat.completion as a message.


def test_a_students_text_answer_is_a_message_anthropic_would_send() -> None:
    message = message_object(messages_answer(), messages_request(), message_id="msg_student1")
    parsed = SdkMessage.model_validate(message)
    assert parsed.id == "msg_student1"
    assert parsed.model == "claude-sonnet-4-5"
    assert parsed.content[0].type == "text"
    assert parsed.content[0].text == "billing"
    assert parsed.stop_reason == "end_turn"
    assert (parsed.usage.input_tokens, parsed.usage.cache_read_input_tokens) == (276, 1024)
    assert parsed.usage.output_tokens == 12


def test_a_students_tool_calls_are_tool_use_blocks_with_parsed_input() -> None:
    message = message_object(
        messages_tool_answer(), messages_request(tools=[MESSAGES_WEATHER_TOOL]), message_id="msg_s2"
    )
    parsed = SdkMessage.model_validate(message)
    assert parsed.stop_reason == "tool_use"
    tool_use = parsed.content[1]
    assert tool_use.type == "tool_use"
    assert tool_use.id.startswith("toolu_")
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "Paris", "days": 2})


def test_an_answer_cut_at_max_tokens_stops_at_max_tokens() -> None:
    cut = messages_answer("bill")
    cut["choices"][0]["finish_reason"] = "length"
    assert (
        message_object(cut, messages_request(), message_id="msg_s3")["stop_reason"] == "max_tokens"
    )


def test_tool_call_arguments_that_are_no_json_object_cannot_be_a_message() -> None:
    broken = messages_tool_answer()
    broken["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": '
    with pytest.raises(DialectError):
        message_object(broken, messages_request(), message_id="msg_s4")


def test_a_students_answer_reads_back_as_the_same_chat_completion() -> None:
    message = message_object(messages_tool_answer(), messages_request(), message_id="msg_s5")
    again = chat_completion(message)["choices"][0]
    assert again["message"]["content"] == "Let me look that up."
    arguments = again["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"city": "Paris", "days": 2}
    assert again["finish_reason"] == "tool_calls"
    assert chat_completion(message)["usage"]["prompt_tokens"] == 1300


# Errors.


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (529, "overloaded_error"),
        (402, "billing_error"),
        (504, "timeout_error"),
        (502, "api_error"),
    ],
)
def test_errors_have_anthropics_shape_and_type_for_the_status(status: int, kind: str) -> None:
    body = error_body(status, "something went wrong")
    assert body == {"type": "error", "error": {"type": kind, "message": "something went wrong"}}
    if kind != "request_too_large":  # documented by Anthropic, not (yet) typed by the SDK
        assert SdkErrorResponse.model_validate(body).error.type == kind
