"""Requests and student answers the dialect conversion tests share: a Responses API
request and a Messages request of one ticket-classification task, and the
``chat.completion`` a student answers them with (text, or weather tool calls)."""

from __future__ import annotations

from typing import Any

# The Responses API.

RESPONSES_WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather at a place",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}


def responses_request(**changes: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1-mini", "instructions": "Classify the ticket.", **changes}


def responses_answer(content: str | None = "billing", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-student",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "student-v3",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "logprobs": None,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {"prompt_tokens": 31, "completion_tokens": 2, "total_tokens": 33},
    }


def responses_tool_answer() -> dict[str, Any]:
    calls = [
        {
            "id": "call_a1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {
            "id": "call_b2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        },
    ]
    return responses_answer(None, tool_calls=calls)


# Anthropic's Messages.

MESSAGES_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather at a place",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def messages_request(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 256,
        "system": "Classify the ticket.",
        "messages": [{"role": "user", "content": "My card was charged twice"}],
    }
    return {**body, **changes}


def messages_answer(content: str | None = "billing", **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-student",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "student-v3",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "logprobs": None,
                "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1300,
            "completion_tokens": 12,
            "total_tokens": 1312,
            "prompt_tokens_details": {"cached_tokens": 1024},
        },
    }


def messages_tool_answer() -> dict[str, Any]:
    call = {
        "id": "call_a1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
    }
    return messages_answer("Let me look that up.", tool_calls=[call])
