"""A student's answer as the client gets it, whole or streamed: OpenAI's shape under the
model name the client asked for, checked against the OpenAPI description and read by the
openai SDK (the stream reassembled by the SDK's own accumulator)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk as SdkChunk

from core.classifier import Prediction
from core.wire import ChatCompletionRequest
from proxy.gateway.routing import client_view, completion_events
from router.classifier import completion as classifier_completion
from router.student import StudentReply

from fakes.vllm import completion as vllm_completion
from wire_schema import validate_chat_completion, validate_sse_stream

MESSAGES = [{"role": "user", "content": "I was charged twice"}]


def lora_answer() -> dict[str, Any]:
    request = {"model": "adapter-7", "messages": MESSAGES, "logprobs": True}
    answer = vllm_completion(request, "billing issue")
    return answer.model_dump(mode="json", serialize_as_any=True)


def classifier_answer() -> dict[str, Any]:
    prediction = Prediction(
        answer="billing",
        label=0,
        probability=0.9,
        logprob=math.log(0.9),
        similarity=0.8,
        familiar=True,
        ranked=[("billing", math.log(0.9)), ("refund", math.log(0.08)), ("other", -math.inf)],
    )
    return classifier_completion(prediction, {"messages": MESSAGES, "top_logprobs": 3})


ANSWERS = {"lora": lora_answer, "classifier": classifier_answer}


def reply(completion: dict[str, Any]) -> StudentReply:
    return StudentReply(completion=completion, text="", confidence=-0.1, seconds=0.01)


def chat(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    )


def reassembled(events: list[bytes]) -> SdkCompletion:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for event in validate_sse_stream(b"".join(events)):
        state.handle_chunk(SdkChunk.model_validate(event))
    return state.get_final_completion()


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_answer_is_openai_shaped_under_the_clients_model_name(kind: str) -> None:
    body = client_view(reply(ANSWERS[kind]()), chat())
    validate_chat_completion(body)
    parsed = SdkCompletion.model_validate(body)
    assert parsed.model == "gpt-4o-mini"
    assert parsed.choices[0].logprobs is None, "not asked for"
    assert parsed.usage is not None
    assert "stop_reason" not in body["choices"][0], "the student server's own field"
    assert "system_fingerprint" not in body


@pytest.mark.parametrize("kind", list(ANSWERS))
def test_logprobs_asked_for_are_the_students(kind: str) -> None:
    source = ANSWERS[kind]()
    body = client_view(reply(source), chat(logprobs=True, top_logprobs=3))
    validate_chat_completion(body)
    logprobs = SdkCompletion.model_validate(body).choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    tokens = source["choices"][0]["logprobs"]["content"]
    assert [t.token for t in logprobs.content] == [t["token"] for t in tokens]
    assert [t.logprob for t in logprobs.content] == [t["logprob"] for t in tokens]


def test_a_finish_reason_openai_does_not_know_reads_as_stop() -> None:
    source = lora_answer()
    source["choices"][0]["finish_reason"] = "abort"
    body = client_view(reply(source), chat())
    validate_chat_completion(body)
    assert body["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("kind", list(ANSWERS))
@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_is_reassembled_by_the_sdk_into_the_whole_answer(
    kind: str, include_usage: bool
) -> None:
    body = client_view(reply(ANSWERS[kind]()), chat(logprobs=True))
    final = reassembled(completion_events(body, include_usage=include_usage))
    whole = SdkCompletion.model_validate(body)
    assert final.id == whole.id
    assert final.model == "gpt-4o-mini"
    assert final.choices[0].message.content == whole.choices[0].message.content
    assert final.choices[0].logprobs == whole.choices[0].logprobs
    assert final.choices[0].finish_reason == "stop"
    assert final.usage == (whole.usage if include_usage else None)
