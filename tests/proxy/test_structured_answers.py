"""Structured answers from an extractor student, through a real proxy with the `openai` SDK
as the client: `chat.completions.parse` with a pydantic model (json_schema), json_object,
and forced tool calls (plain and streamed), each answered inside the proxy in the
teacher's own layout; requests unlike the training (other tools, a tool result to read)
go to the teacher, and a value the input does not hold is never made up."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletionMessageToolCall
from pydantic import BaseModel
from sqlmodel import Session

from core.classifier import BUNDLED_ENCODER
from core.embedding import default_embedding_model
from core.extractor import Extractor, source_text
from core.settings import Settings
from core.store import create_store_engine, create_tables, list_exchanges
from core.tables import StudentHead, StudentVersion, Task
from core.tool_profile import tools_signature
from distiller.candidates import Judging, extractor_candidate
from distiller.curation import CuratedSet
from distiller.extractor import ExtractorConfig
from distiller.fields import read_fields

from conftest import RunningProxy
from fakes.extraction import (
    FUNCTION,
    SLOTS,
    TOOL,
    ExtractionTeacher,
    examples,
    gold,
    messages,
    rows,
)
from servers import ServerThread, wait_until

TASK = "parser"
TESTS_CONFIG = ExtractorConfig(epochs=3, min_steps=40)


class Parsed(BaseModel):
    intent: str
    city: str | None
    state: str | None


@dataclass(frozen=True)
class Trained:
    extractor: Extractor
    floor: float  # the lowest confidence of a held-out answer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One extractor on 60 utterances of each of two intents (json_object answers)."""
    train, heldout = examples(rows("train", 60)), examples(rows("validate", 20))
    reading = read_fields([(e.messages, e.answer) for e in train + heldout])
    candidate = extractor_candidate(
        curated=CuratedSet("json", train, heldout, Counter(), fields=reading),
        name=f"{TASK}-v1",
        output_path=tmp_path_factory.mktemp("extractor") / "extractor.bin",
        encoder_path=default_embedding_model(),
        encoder_name=BUNDLED_ENCODER,
        judging=Judging(target=0.9),
        config=TESTS_CONFIG,
    )
    assert candidate.stored is not None
    floor = min(d["confidence"] for d in candidate.evaluation.details)
    return Trained(
        Extractor.from_bytes(candidate.stored, encoder_path=default_embedding_model()), floor
    )


def as_teacher_writes(extractor: Extractor, answers: list[tuple[str, str]]) -> Extractor:
    """The same model, writing its answers as a teacher whose answers were ``answers``."""
    reading = read_fields([(messages(text), answer) for text, answer in answers])
    assert reading.layout is not None
    copy = Extractor.from_bytes(extractor.to_bytes(), encoder_path=default_embedding_model())
    copy.layout = reading.layout
    return copy


def publish(
    database_url: str, extractor: Extractor, *, threshold: float, profile: dict[str, Any]
) -> None:
    """Make ``extractor`` the live version of TASK, as the distiller leaves it."""
    engine = create_store_engine(database_url)
    create_tables(engine)
    version_id = uuid.uuid4().hex
    with Session(engine) as session:
        task = session.get(Task, TASK) or Task(name=TASK)
        task.active_version_id = version_id
        task.mode, task.cutover_percent, task.audit_percent = "live", 100.0, 0.0
        session.add(task)
        session.add(
            StudentVersion(
                id=version_id,
                task=TASK,
                number=1,
                kind="extractor",
                state="published",
                base_model=BUNDLED_ENCODER,
                adapter_name=f"{TASK}-v1",
                adapter_path="/extractors/parser/v1/extractor.bin",
                metric="json",
                agreement=0.9,
                confidence_threshold=threshold,
                retained_share=0.9,
                evaluation={"profile": {"models": ["gpt-4o-mini"], **profile}},
            )
        )
        session.add(StudentHead(version_id=version_id, data=extractor.to_bytes()))
        session.commit()
    engine.dispose()


@pytest.fixture
def extraction_teacher() -> Iterator[ExtractionTeacher]:
    fake = ExtractionTeacher()
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def parsing_proxy(
    extraction_teacher: ExtractionTeacher,
    trained: Trained,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Callable[[str], RunningProxy]:
    """A proxy whose task is live on the extractor, written as the teacher of ``style``
    (json_object, json_schema or tools) writes, with a threshold that serves every answer
    at least as sure as the least sure held-out one (these tests are about the answers'
    form; the gate's share is the distiller's tests')."""

    def start(style: str) -> RunningProxy:
        chosen = rows("train", 60)
        nulls = style == "json_schema"
        answers = [(r["text"], json.dumps(gold(r, nulls=nulls))) for r in chosen]
        if style == "tools":
            answers = [
                (text, json.dumps([{"name": FUNCTION, "arguments": answer}]))
                for text, answer in answers
            ]
        extractor = as_teacher_writes(trained.extractor, answers)
        profile: dict[str, Any] = {"response_formats": [style if style != "tools" else "text"]}
        profile["max_prompt_chars"] = 400
        if style == "tools":
            profile |= {
                "tools": True,
                "tool_signatures": [tools_signature([TOOL])],
                "tool_results": False,
            }
        publish(sqlite_url, extractor, threshold=trained.floor - 1.0, profile=profile)
        settings = make_settings(
            teacher_url=extraction_teacher.url + "/v1",
            student_url="http://127.0.0.1:9",  # nothing listens: no hop may be needed
            policy_refresh_seconds=0.2,
        )
        proxy = start_proxy(settings)
        wait_until(lambda: proxy.runtime.policies.get(TASK).mode == "live", timeout=30)
        return proxy

    return start


def heldout_texts(count: int = 6) -> list[str]:
    return [r["text"] for r in rows("validate", count // 2)]


def test_parse_with_a_pydantic_model_is_answered_by_the_extractor(
    parsing_proxy: Callable[[str], RunningProxy], extraction_teacher: ExtractionTeacher
) -> None:
    proxy = parsing_proxy("json_schema")
    client = proxy.client()
    agreed = 0
    texts = heldout_texts()
    for text in texts:
        raw = client.chat.completions.with_raw_response.parse(
            model="gpt-4o-mini",
            messages=messages(text),
            response_format=Parsed,
            extra_headers={"X-Stillroom-Task": TASK},
        )
        assert raw.headers["x-stillroom-served-by"] == "student"
        message = raw.parse().choices[0].message
        assert isinstance(message.parsed, Parsed)
        assert message.content is not None
        assert list(json.loads(message.content)) == ["intent", *SLOTS]  # nulls, as taught
        agreed += message.parsed.model_dump() == extraction_teacher.answer(
            {"messages": messages(text), "response_format": {"type": "json_schema"}}
        )
    assert agreed >= len(texts) // 2
    assert extraction_teacher.requests == []


def test_json_object_answers_are_written_in_the_teachers_layout(
    parsing_proxy: Callable[[str], RunningProxy],
) -> None:
    proxy = parsing_proxy("json_object")
    for text in heldout_texts():
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": messages(text),
                "response_format": {"type": "json_object"},
            },
            headers={"x-stillroom-task": TASK, "authorization": "Bearer sk-client"},
            timeout=30,
        )
        assert response.headers["x-stillroom-served-by"] == "student"
        content = response.json()["choices"][0]["message"]["content"]
        document = json.loads(content)
        assert content == json.dumps(document)  # the teacher's separators
        assert None not in document.values()  # absent slots left out, as taught
        assert next(iter(document)) == "intent"
        for slot in SLOTS:
            assert slot not in document or document[slot] in text


def ask_with_tool(proxy: RunningProxy, text: str, **extra: Any) -> Any:
    return proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages(text),
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": FUNCTION}},
        extra_headers={"X-Stillroom-Task": TASK},
        **extra,
    )


def test_a_forced_tool_call_is_answered_with_a_call_of_the_same_function(
    parsing_proxy: Callable[[str], RunningProxy], extraction_teacher: ExtractionTeacher
) -> None:
    proxy = parsing_proxy("tools")
    ids = set()
    for text in heldout_texts():
        raw = ask_with_tool(proxy, text)
        assert raw.headers["x-stillroom-served-by"] == "student"
        choice = raw.parse().choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert isinstance(call, ChatCompletionMessageToolCall)
        assert call.function.name == FUNCTION
        assert call.id.startswith("call_")
        ids.add(call.id)
        arguments = json.loads(call.function.arguments)
        assert arguments["intent"] in ("GetWeather", "BookRestaurant")
    assert len(ids) == len(heldout_texts())  # a fresh id each time
    assert extraction_teacher.requests == []


def test_a_streamed_tool_call_arrives_as_argument_deltas(
    parsing_proxy: Callable[[str], RunningProxy],
) -> None:
    proxy = parsing_proxy("tools")
    text = heldout_texts()[0]
    whole = ask_with_tool(proxy, text).parse().choices[0].message.tool_calls[0]
    with proxy.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=messages(text),
        tools=[TOOL],
        tool_choice={"type": "function", "function": {"name": FUNCTION}},
        stream=True,
        extra_headers={"X-Stillroom-Task": TASK},
    ) as stream:
        chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id is not None
    assert deltas[0].id.startswith("call_")
    assert deltas[0].function is not None
    assert deltas[0].function.name == FUNCTION
    pieces = [d.function.arguments for d in deltas[1:] if d.function and d.function.arguments]
    assert len(pieces) > 1
    assert "".join(pieces) == whole.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_other_tools_or_a_tool_result_to_read_go_to_the_teacher(
    parsing_proxy: Callable[[str], RunningProxy], extraction_teacher: ExtractionTeacher
) -> None:
    proxy = parsing_proxy("tools")
    text = heldout_texts()[0]
    other = json.loads(json.dumps(TOOL))
    other["function"]["parameters"]["properties"]["country"] = {"type": "string"}
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages(text),
        tools=[other],
        extra_headers={"X-Stillroom-Task": TASK},
    )
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    answered = [
        *messages(text),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": FUNCTION, "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "recorded"},
    ]
    raw = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=answered,
        tools=[TOOL],
        extra_headers={"X-Stillroom-Task": TASK},
    )
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert len(extraction_teacher.requests) == 2


def test_a_value_the_input_does_not_hold_is_never_made_up(
    parsing_proxy: Callable[[str], RunningProxy], extraction_teacher: ExtractionTeacher
) -> None:
    proxy = parsing_proxy("json_object")
    asked = [
        "what is the weather like in the capital of france",
        "will it rain tomorrow where the eiffel tower is",
        "book a table for two in the city of light tonight",
    ]
    for text in asked:
        extraction_teacher.answers[text] = {"intent": "GetWeather", "city": "Paris"}
    for text in asked:
        response = httpx.post(
            proxy.url + "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": messages(text),
                "response_format": {"type": "json_object"},
            },
            headers={"x-stillroom-task": TASK},
            timeout=30,
        )
        document = json.loads(response.json()["choices"][0]["message"]["content"])
        if response.headers["x-stillroom-served-by"] == "student":
            assert "Paris" not in document.values()
            assert all(document[s] in source_text(messages(text)) for s in SLOTS if s in document)
        else:
            assert document == {"intent": "GetWeather", "city": "Paris"}


def test_export_writes_tool_call_pairs_as_tool_fine_tuning_records(
    extraction_teacher: ExtractionTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=extraction_teacher.url + "/v1"))
    texts = [r["text"] for r in rows("train", 3)]
    for text in texts:
        ask_with_tool(proxy, text)
    wait_until(lambda: len(proxy_exchanges(proxy)) == len(texts), timeout=30)
    exported = httpx.get(proxy.url + f"/admin/tasks/{TASK}/export", timeout=30)
    assert exported.status_code == 200
    records = [json.loads(line) for line in exported.text.splitlines()]
    assert len(records) == len(texts)
    for record in records:
        assert record["tools"] == [TOOL]
        answer = record["messages"][-1]
        assert answer["role"] == "assistant"
        assert answer["content"] is None
        [call] = answer["tool_calls"]
        assert call["type"] == "function"
        assert call["function"]["name"] == FUNCTION
        user = record["messages"][-2]["content"]
        assert json.loads(call["function"]["arguments"]) == extraction_teacher.answer(
            {"messages": messages(user)}
        )


def proxy_exchanges(proxy: RunningProxy) -> list[Any]:
    with Session(proxy.engine) as session:
        return list(list_exchanges(session=session, task=TASK))
