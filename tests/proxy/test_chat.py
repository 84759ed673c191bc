"""Chat completions through a real proxy server with the openai SDK as the client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from conftest import RunningProxy
from fakes.teacher import FakeTeacher, answer_text, completion
from servers import stored_exchanges
from wire_schema import validate_chat_completion, validate_sse_stream

MESSAGES = [
    {"role": "system", "content": "Classify the ticket."},
    {"role": "user", "content": "My card was charged twice"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "refund",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
]


def test_plain_completion_is_the_teachers_answer_unchanged(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    body = json.loads(raw.http_response.content)
    validate_chat_completion(body)
    expected = completion({"model": "gpt-4o-mini", "messages": MESSAGES})
    assert body["choices"] == expected["choices"]
    assert body["usage"] == expected["usage"]
    assert raw.headers["x-request-id"] == "req_fake"
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert raw.headers["x-stillroom-task"].startswith("auto-")


def test_exchange_is_stored_with_task_tokens_cost_and_no_key(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    proxy.client(api_key="sk-secret-client-key").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Stillroom-Task": "tickets"}
    )
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.task == "tickets"
    assert (exchange.served_by, exchange.origin) == ("teacher", "client")
    assert exchange.status == "ok"
    assert exchange.request["messages"] == MESSAGES
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == answer_text(
        {"messages": MESSAGES}
    )
    usage = completion({"model": "gpt-4o-mini", "messages": MESSAGES})["usage"]
    assert exchange.prompt_tokens == usage["prompt_tokens"]
    assert exchange.completion_tokens == usage["completion_tokens"]
    price = proxy.settings.price_of("gpt-4o-mini")
    assert price is not None
    assert exchange.cost_usd == pytest.approx(
        price.cost(usage["prompt_tokens"], usage["completion_tokens"])
    )
    assert teacher.chat_requests()[0].headers["authorization"] == "Bearer sk-secret-client-key"
    dumped = json.dumps([exchange.request, exchange.response])
    assert "sk-secret-client-key" not in dumped


def test_stream_arrives_chunk_by_chunk_and_is_reassembled_in_the_store(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"authorization": "Bearer sk-client"},
    ) as response:
        body = response.read()
    chunks = validate_sse_stream(body)
    assert all("usage" not in chunk for chunk in chunks), "usage the client did not ask for"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == answer_text({"messages": MESSAGES})
    upstream = teacher.chat_requests()[0].json()
    assert upstream["stream_options"] == {"include_usage": True}
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.stream
    assert exchange.status == "ok"
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == text
    assert exchange.response["choices"][0]["finish_reason"] == "stop"
    assert exchange.prompt_tokens is not None
    assert exchange.prompt_tokens > 0
    assert exchange.cost_usd is not None
    assert exchange.cost_usd > 0
    assert exchange.request.get("stream_options") is None, "the client's request is stored"


def test_stream_with_include_usage_keeps_the_usage_chunk(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    expected = completion({"model": "gpt-4o-mini", "messages": MESSAGES})["usage"]
    assert chunks[-1].usage.prompt_tokens == expected["prompt_tokens"]
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.completion_tokens == expected["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_reach_the_client_and_the_store(
    proxy: RunningProxy, teacher: FakeTeacher, stream: bool
) -> None:
    client = proxy.client()
    if stream:
        calls: dict[int, dict[str, str]] = {}
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,
            stream=True,  # type: ignore[arg-type]
        ):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                if delta.function and delta.function.name:
                    call["name"] += delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
        received = [calls[i] for i in sorted(calls)]
    else:
        result = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=TOOLS,  # type: ignore[arg-type]
        )
        received = [
            {"name": c.function.name, "arguments": c.function.arguments}  # type: ignore[union-attr]
            for c in result.choices[0].message.tool_calls or []
        ]
    expected = completion({"model": "gpt-4o-mini", "messages": MESSAGES, "tools": TOOLS})
    expected_calls = expected["choices"][0]["message"]["tool_calls"]
    assert received == [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in expected_calls
    ]
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.finish_reason == "tool_calls"
    assert exchange.response is not None
    stored = exchange.response["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]) for c in stored] == [
        (c["id"], c["function"]) for c in expected_calls
    ]


def test_json_schema_response_format_passes_and_is_one_task(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {
            "name": "ticket",
            "schema": {
                "type": "object",
                "properties": {"category": {"type": "string"}, "urgency": {"type": "string"}},
            },
        },
    }
    client = proxy.client()
    tasks = set()
    for text in ("first ticket", "second ticket"):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[MESSAGES[0], {"role": "user", "content": text}],
            response_format=response_format,  # type: ignore[arg-type]
        )
        answer = json.loads(raw.parse().choices[0].message.content or "")
        assert set(answer) == {"category", "urgency"}
        tasks.add(raw.headers["x-stillroom-task"])
    plain = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(tasks) == 1, "same template, same task"
    assert plain.headers["x-stillroom-task"] not in tasks
    assert teacher.chat_requests()[0].json()["response_format"] == response_format


def test_n_and_logprobs_pass_through(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    result = proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, n=2, logprobs=True, top_logprobs=2
    )
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[1].message.content == answer_text({"messages": MESSAGES}, 1)
    assert result.choices[0].logprobs is not None
    assert result.choices[0].logprobs.content is not None
    sent = teacher.chat_requests()[0].json()
    assert (sent["n"], sent["logprobs"], sent["top_logprobs"]) == (2, True, 2)


def test_unknown_parameters_reach_the_teacher(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        extra_body={"reasoning_effort": "low", "metadata": {"team": "support"}},
    )
    sent = teacher.chat_requests()[0].json()
    assert sent["reasoning_effort"] == "low"
    assert sent["metadata"] == {"team": "support"}


def test_sdk_sees_no_difference_between_proxy_and_teacher(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    via_proxy = proxy.client()
    with openai.OpenAI(base_url=teacher.url + "/v1", api_key="sk", max_retries=0) as direct:
        a = direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).model_dump()
    b = via_proxy.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).model_dump()
    a.pop("created")
    b.pop("created")
    assert a == b
