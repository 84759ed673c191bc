"""A LoRA student asked for JSON: the request's ``response_format`` reaches the student
server as vLLM's structured outputs read it, so the student's answer parses (and fits the
schema); a malformed one is vLLM's 400, and the proxy falls back to the teacher."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from router.policy import StudentRef
from router.student import StudentClient, StudentUnavailable

from fakes.vllm import RunningVllm, write_adapter_config
from routing_support import ADAPTER

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"enum": ["PlayMusic", "GetWeather"]},
        "slots": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
    "required": ["intent", "slots"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "request", "schema": SCHEMA, "strict": True},
}
MESSAGES = [{"role": "user", "content": "what is the weather in Paris"}]

STUDENT = StudentRef(
    version_id="v1",
    number=1,
    kind="lora",
    adapter_name=ADAPTER,
    metric="json",
    confidence_threshold=None,
)


@pytest.fixture
def vllm(tmp_path: Path) -> Iterator[RunningVllm]:
    running = RunningVllm()
    running.fake.adapters[ADAPTER] = str(write_adapter_config(tmp_path / ADAPTER))
    running.fake.answers[ADAPTER] = "GetWeather in Paris"  # what it says when free
    yield running
    running.stop()


@pytest.fixture
async def student(vllm: RunningVllm) -> AsyncIterator[StudentClient]:
    async with httpx.AsyncClient() as http:
        client = StudentClient(base_urls=[vllm.url], client=http, timeout=5.0, refresh_seconds=1)
        await client.start()
        yield client
        await client.close()


def sent(vllm: RunningVllm) -> dict[str, Any]:
    body: dict[str, Any] = vllm.fake.chat_requests()[-1].body
    return body


async def test_json_schema_reaches_vllm_as_sent_and_the_answer_fits_it(
    student: StudentClient, vllm: RunningVllm
) -> None:
    reply = await student.answer(STUDENT, {"messages": MESSAGES, "response_format": JSON_SCHEMA})
    assert sent(vllm)["response_format"] == JSON_SCHEMA
    jsonschema.validate(json.loads(reply.text), SCHEMA)


async def test_json_object_reaches_vllm_and_the_answer_is_an_object(
    student: StudentClient, vllm: RunningVllm
) -> None:
    payload = {"messages": MESSAGES, "response_format": {"type": "json_object"}}
    reply = await student.answer(STUDENT, payload)
    assert sent(vllm)["response_format"] == {"type": "json_object"}
    assert isinstance(json.loads(reply.text), dict)


async def test_a_text_request_asks_for_no_structured_output(
    student: StudentClient, vllm: RunningVllm
) -> None:
    for payload in (
        {"messages": MESSAGES},
        {"messages": MESSAGES, "response_format": {"type": "text"}},
    ):
        reply = await student.answer(STUDENT, payload)
        assert "response_format" not in sent(vllm)
        assert reply.text == "GetWeather in Paris"


async def test_a_schema_vllm_refuses_makes_the_student_unavailable(student: StudentClient) -> None:
    nameless = {"type": "json_schema", "json_schema": {"schema": SCHEMA}}
    with pytest.raises(StudentUnavailable, match="HTTP 400"):
        await student.answer(STUDENT, {"messages": MESSAGES, "response_format": nameless})
