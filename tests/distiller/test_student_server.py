"""The embedded student server: vLLM's OpenAI-compatible API over the tiny model, on a real
uvicorn server, with the real openai SDK as the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from distiller.student_server import create_student_app

from servers import ServerThread
from wire_schema import validate_chat_completion, validate_models_list, validate_sse_stream

BASE = "tiny-base"
MESSAGES: list[Any] = [{"role": "user", "content": "I want a refund for the ticket"}]


class Student:
    """The running server, an httpx client for raw bodies and the openai SDK."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        self.sdk = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    def chat(self, **body: Any) -> httpx.Response:
        return self.http.post("/v1/chat/completions", json={"messages": MESSAGES, **body})

    def close(self) -> None:
        self.http.close()
        self.sdk.close()


@pytest.fixture
def student(tiny_model: Path, adapters: dict[str, Path]) -> Iterator[Student]:
    app = create_student_app(
        base_model=str(tiny_model),
        adapters={"alpha": str(adapters["alpha"])},
        served_model_name=BASE,
    )
    server = ServerThread(app).start()
    client = Student(server.url)
    yield client
    client.close()
    server.stop()


def assert_vllm_error(response: httpx.Response, status: int, error_type: str, text: str) -> None:
    """vLLM's ErrorResponse: ``{"error": {message, type, param, code}}``, ``code`` the status."""
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["code"] == status
    assert error["param"] is None
    assert text in error["message"]


def test_health_answers_200(student: Student) -> None:
    assert student.http.get("/health").status_code == 200


def test_chat_completion_matches_the_openai_schema(student: Student) -> None:
    response = student.chat(model="alpha", max_tokens=8, temperature=0)
    assert response.status_code == 200
    body = response.json()
    validate_chat_completion(body)
    assert body["model"] == "alpha"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    completion = student.sdk.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
    )
    assert completion.choices[0].message.content == body["choices"][0]["message"]["content"]


def test_base_and_adapter_answer_differently(student: Student) -> None:
    def text(model: str) -> str:
        body = student.chat(model=model, max_completion_tokens=8, temperature=0).json()
        return str(body["choices"][0]["message"]["content"])

    assert text(BASE) != text("alpha")


def test_logprobs_and_top_logprobs_are_returned(student: Student) -> None:
    completion = student.sdk.chat.completions.create(
        model="alpha",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content) == 6
    for token in logprobs.content:
        assert token.logprob <= 0
        assert [top.logprob for top in token.top_logprobs] == sorted(
            (top.logprob for top in token.top_logprobs), reverse=True
        )
        assert len(token.top_logprobs) == 3
    assert "".join(t.token for t in logprobs.content) == completion.choices[0].message.content


def test_top_logprobs_without_logprobs_is_refused(student: Student) -> None:
    response = student.chat(model=BASE, max_tokens=2, top_logprobs=2)
    assert_vllm_error(response, 400, "BadRequestError", "`logprobs` must be set to true")


def test_stream_matches_the_schema_and_the_whole_answer(student: Student) -> None:
    whole = student.chat(model="alpha", max_tokens=10, temperature=0, logprobs=True).json()
    response = student.chat(
        model="alpha",
        max_tokens=10,
        temperature=0,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = validate_sse_stream(response.content)
    *content_chunks, usage_chunk = chunks
    assert content_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in content_chunks)
    assert text == whole["choices"][0]["message"]["content"]
    streamed_logprobs = [
        token
        for chunk in content_chunks
        if chunk["choices"][0]["logprobs"]
        for token in chunk["choices"][0]["logprobs"]["content"]
    ]
    assert streamed_logprobs == whole["choices"][0]["logprobs"]["content"]
    assert content_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]


def test_the_sdk_reads_the_stream(student: Student) -> None:
    stream = student.sdk.chat.completions.create(
        model=BASE,
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(chunk.model == BASE for chunk in chunks)


def test_models_lists_the_base_and_its_adapters(student: Student, tiny_model: Path) -> None:
    body = student.http.get("/v1/models").json()
    validate_models_list(body)
    cards = {card["id"]: card for card in body["data"]}
    assert list(cards) == [BASE, "alpha"]
    assert cards[BASE]["parent"] is None
    assert cards[BASE]["root"] == str(tiny_model)
    assert cards["alpha"]["parent"] == BASE
    assert cards["alpha"]["root"].endswith("alpha")
    assert [model.id for model in student.sdk.models.list()] == [BASE, "alpha"]


def test_adapters_load_answer_and_unload_over_http(
    student: Student, adapters: dict[str, Path]
) -> None:
    load = {"lora_name": "beta", "lora_path": str(adapters["beta"])}
    response = student.http.post("/v1/load_lora_adapter", json=load)
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'beta' added successfully."
    assert [card["id"] for card in student.http.get("/v1/models").json()["data"]] == [
        BASE,
        "alpha",
        "beta",
    ]
    assert student.chat(model="beta", max_tokens=3).status_code == 200
    response = student.http.post("/v1/unload_lora_adapter", json={"lora_name": "beta"})
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'beta' removed successfully."
    assert_vllm_error(
        student.chat(model="beta", max_tokens=3), 404, "NotFoundError", "`beta` does not exist"
    )


def test_loading_a_loaded_name_needs_load_inplace(
    student: Student, adapters: dict[str, Path]
) -> None:
    load = {"lora_name": "alpha", "lora_path": str(adapters["beta"])}
    before = student.chat(model="alpha", max_tokens=6, temperature=0).json()
    response = student.http.post("/v1/load_lora_adapter", json=load)
    assert_vllm_error(response, 400, "InvalidUserInput", "has already been loaded")
    response = student.http.post("/v1/load_lora_adapter", json={**load, "load_inplace": True})
    assert response.status_code == 200
    after = student.chat(model="alpha", max_tokens=6, temperature=0).json()
    assert after["choices"][0]["message"] != before["choices"][0]["message"]


def test_load_errors_have_vllms_statuses(student: Student, tmp_path: Path) -> None:
    missing = {"lora_name": "gone", "lora_path": str(tmp_path / "nowhere")}
    response = student.http.post("/v1/load_lora_adapter", json=missing)
    assert_vllm_error(response, 404, "NotFoundError", "Loading lora gone failed: No adapter found")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    response = student.http.post(
        "/v1/load_lora_adapter", json={"lora_name": "broken", "lora_path": str(broken)}
    )
    assert_vllm_error(response, 400, "BadRequestError", "could not load LoRA adapter 'broken'")
    response = student.http.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert_vllm_error(response, 400, "Bad Request", "lora_path")
    response = student.http.post("/v1/load_lora_adapter", json={"lora_name": "", "lora_path": ""})
    assert_vllm_error(response, 400, "InvalidUserInput", "must be provided")
    assert [card["id"] for card in student.http.get("/v1/models").json()["data"]] == [BASE, "alpha"]


def test_unloading_an_unknown_adapter_is_404(student: Student) -> None:
    response = student.http.post("/v1/unload_lora_adapter", json={"lora_name": "nope"})
    assert_vllm_error(response, 404, "NotFoundError", "The lora adapter 'nope' cannot be found.")


def test_an_unknown_model_is_404(student: Student) -> None:
    response = student.chat(model="nope", max_tokens=2)
    assert_vllm_error(response, 404, "NotFoundError", "The model `nope` does not exist.")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        student.sdk.chat.completions.create(
            model="nope",
            messages=MESSAGES,
            max_tokens=2,
        )


def test_a_prompt_longer_than_the_context_is_400(student: Student) -> None:
    long = [{"role": "user", "content": "refund " * 2000}]
    response = student.chat(model=BASE, messages=long, max_tokens=2)
    assert_vllm_error(response, 400, "BadRequestError", "maximum context length")
    response = student.chat(model=BASE, messages=long, max_tokens=2, stream=True)
    assert_vllm_error(response, 400, "BadRequestError", "maximum context length")


def test_invalid_requests_are_400_as_in_vllm(student: Student) -> None:
    assert_vllm_error(student.chat(max_tokens=2), 400, "Bad Request", "model")
    assert_vllm_error(student.http.get("/v1/nothing"), 404, "Not Found", "Not Found")


class Booking(BaseModel):
    intent: Literal["BookRestaurant", "GetWeather"]
    city: str
    party_size: int | None = None


def test_sdk_parse_gets_an_answer_held_to_its_pydantic_model(student: Student) -> None:
    # An adapter of random weights: only the schema makes its answers parse.
    for seed in range(3):
        completion = student.sdk.chat.completions.parse(
            model="alpha",
            messages=MESSAGES,
            response_format=Booking,
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        assert isinstance(completion.choices[0].message.parsed, Booking)


def test_streamed_json_object_answer_parses(student: Student) -> None:
    response = student.chat(
        model="alpha",
        max_tokens=40,
        temperature=1.0,
        seed=3,
        stream=True,
        response_format={"type": "json_object"},
    )
    chunks = validate_sse_stream(response.content)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert isinstance(json.loads(text), dict)


def test_a_response_format_that_cannot_be_followed_is_400(student: Student) -> None:
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}
    for stream in (False, True):
        response = student.chat(model=BASE, max_tokens=2, stream=stream, response_format=bad)
        assert_vllm_error(response, 400, "BadRequestError", "#/nowhere")
