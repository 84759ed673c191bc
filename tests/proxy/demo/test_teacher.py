"""The demo's simulated teacher speaks OpenAI's wire format and labels like the task's
teacher: gold intents for known messages, the closest intent or ``other`` for new ones."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from distiller.datasets import clinc150_banking20
from proxy.demo.teacher import (
    OTHER,
    IntentTeacher,
    Latency,
    count_tokens,
    create_teacher_app,
    prompt_tokens,
    system_prompt,
)

from servers import ServerThread
from wire_schema import validate_chat_completion, validate_error, validate_sse_stream

DATA = clinc150_banking20()
SYSTEM = system_prompt(DATA["intents"])


@pytest.fixture(scope="module")
def teacher() -> Iterator[ServerThread]:
    labelled = DATA["train"] + DATA["val"] + DATA["test"]
    server = ServerThread(create_teacher_app(IntentTeacher(labelled), Latency(0.01))).start()
    yield server
    server.stop()


def ask(text: str) -> dict[str, object]:
    return {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
    }


def test_known_messages_get_their_gold_intent_with_usage(teacher: ServerThread) -> None:
    text, intent = DATA["test"][7]
    response = httpx.post(f"{teacher.url}/v1/chat/completions", json=ask(text))
    assert response.status_code == 200
    body = response.json()
    validate_chat_completion(body)
    assert body["choices"][0]["message"]["content"] == intent
    usage = body["usage"]
    assert usage["prompt_tokens"] == prompt_tokens(ask(text)["messages"])  # type: ignore[arg-type]
    assert usage["completion_tokens"] >= 1


def test_streams_end_with_usage_when_asked(teacher: ServerThread) -> None:
    text, intent = DATA["val"][3]
    body = {**ask(text), "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(f"{teacher.url}/v1/chat/completions", json=body)
    chunks = validate_sse_stream(response.content)
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == intent
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_the_openai_sdk_reads_its_answers(teacher: ServerThread) -> None:
    client = OpenAI(base_url=f"{teacher.url}/v1", api_key="sk-test", max_retries=0)
    text, intent = DATA["train"][42]
    completion = client.chat.completions.create(**ask(text))  # type: ignore[call-overload]
    assert completion.choices[0].message.content == intent
    assert [m.id for m in client.models.list()] == ["gpt-4o"]


def test_a_request_without_a_user_message_is_refused(teacher: ServerThread) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "system", "content": SYSTEM}]}
    response = httpx.post(f"{teacher.url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    validate_error(response.json())


def test_new_phrasings_get_the_closest_intent_and_nonsense_gets_other() -> None:
    teacher = IntentTeacher(DATA["train"])
    assert teacher.label("i lost my credit card somewhere, please report it") == (
        "report_lost_card"
    )
    assert teacher.label("what is the airspeed velocity of an unladen swallow") == OTHER


def test_token_counts_grow_with_the_text() -> None:
    assert count_tokens("balance") == 1
    assert count_tokens("what is my balance?") == 5
    assert count_tokens("a" * 40) > count_tokens("a" * 8)
