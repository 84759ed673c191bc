"""A client that asks again makes the earlier answer suspect: the same request again within
seconds (a retry), or the conversation sent back with that answer and a complaint
(instructor's re-ask). Found by the capture writer as it stores exchanges; on SQLite and
Postgres."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.metrics import Metrics
from core.request_identity import request_hash
from core.settings import Settings
from core.store import create_store_engine, create_tables, insert_exchanges
from core.tables import Exchange, ExchangeCreate
from proxy.gateway.retries import RetryRules, mark_suspects

from conftest import RunningProxy
from routing_support import SYSTEM, TASK
from servers import stored_exchanges, wait_until

QUESTION = [SYSTEM, {"role": "user", "content": "my bill is wrong"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Intent",
            "parameters": {"type": "object", "properties": {"intent": {"type": "string"}}},
        },
    }
]
COMPLAINT = (
    "Validation Error found:\n1 validation error for Intent\nintent\n  Field required\n"
    "Recall the function correctly, fix the errors"
)


def store(url: str) -> Iterator[Engine]:
    engine = create_store_engine(url)
    create_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The store, on SQLite and on Postgres."""
    yield from store(database_url)


@pytest.fixture
def sqlite(sqlite_url: str) -> Iterator[Engine]:
    """The store on SQLite only, for cases the same query decides on both."""
    yield from store(sqlite_url)


def completion(message: dict[str, Any]) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }


def exchange(
    messages: list[dict[str, Any]],
    answer: dict[str, Any],
    *,
    at: datetime,
    served_by: str = "teacher",
    key: str = "key-a",
) -> ExchangeCreate:
    request = {"model": "gpt-4o-mini", "messages": messages, "tools": TOOLS}
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task=TASK,
        created_at=at,
        served_by=served_by,
        status="ok",
        http_status=200,
        model="gpt-4o-mini",
        request=request,
        response=completion(answer),
        latency_ms=500.0,
        client_key_hash=key,
        request_hash=request_hash(request),
    )


def stored(engine: Engine, *exchanges: ExchangeCreate, metrics: Metrics | None = None) -> int:
    """Store exchanges as the capture writer does; how many earlier answers they marked."""
    insert_exchanges(engine=engine, exchanges=exchanges)
    return mark_suspects(engine, exchanges, RetryRules(), metrics or Metrics())


def suspect(engine: Engine, exchange_id: str) -> str | None:
    with Session(engine) as session:
        row = session.get(Exchange, exchange_id)
        assert row is not None
        return row.suspect


START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
CALL = {"id": "call_1", "type": "function", "function": {"name": "Intent", "arguments": "{}"}}


def test_the_same_request_within_seconds_makes_the_earlier_answer_a_retry(
    engine: Engine,
) -> None:
    first = exchange(QUESTION, {"role": "assistant", "content": "billing"}, at=START)
    again = exchange(QUESTION, {"role": "assistant", "content": "billing"}, at=START + 3 * SECOND)
    metrics = Metrics()
    assert stored(engine, first, metrics=metrics) == 0
    assert stored(engine, again, metrics=metrics) == 1
    assert (suspect(engine, first.id), suspect(engine, again.id)) == ("retry", None)
    counted = metrics.registry.get_sample_value(
        "stillroom_suspect_answers_total", {"task": TASK, "reason": "retry"}
    )
    assert counted == 1


@pytest.mark.parametrize(
    "change",
    [
        {"at": START + 30 * SECOND},  # past the window
        {"served_by": "cache"},  # a deterministic request answered from the store
        {"key": "key-b"},  # another client
        {"at": START + 0.2 * SECOND},  # asked alongside, before the first answer came
    ],
    ids=["late", "cache", "other_key", "parallel"],
)
def test_asking_the_same_again_is_no_retry_when(sqlite: Engine, change: dict[str, Any]) -> None:
    engine = sqlite
    first = exchange(QUESTION, {"role": "assistant", "content": "billing"}, at=START)
    values: dict[str, Any] = {"at": START + 3 * SECOND, **change}
    again = exchange(QUESTION, {"role": "assistant", "content": "billing"}, **values)
    stored(engine, first)
    assert stored(engine, again) == 0
    assert suspect(engine, first.id) is None


def test_a_json_mode_reask_makes_the_earlier_answer_suspect(engine: Engine) -> None:
    answer = {"role": "assistant", "content": '{"intent": "billing"}'}
    first = exchange(QUESTION, answer, at=START)
    reask = [
        *QUESTION,
        {"role": "assistant", "content": '{"intent":"billing"}'},
        {"role": "user", "content": "Correct your JSON ONLY RESPONSE, based on the following"},
    ]
    stored(engine, first)
    assert stored(engine, exchange(reask, answer, at=START + 40 * SECOND)) == 1
    assert suspect(engine, first.id) == "reask"


def test_a_conversation_going_on_leaves_the_earlier_answer_alone(engine: Engine) -> None:
    first = exchange(
        QUESTION, {"role": "assistant", "content": None, "tool_calls": [CALL]}, at=START
    )
    going_on = [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"balance": 12.5}'},
    ]
    stored(engine, first)
    answer = {"role": "assistant", "content": "billing"}
    assert stored(engine, exchange(going_on, answer, at=START + 40 * SECOND)) == 0
    assert suspect(engine, first.id) is None


def test_a_reask_of_another_answer_leaves_the_earlier_answer_alone(sqlite: Engine) -> None:
    engine = sqlite
    first = exchange(QUESTION, {"role": "assistant", "content": "billing"}, at=START)
    reask = [
        *QUESTION,
        {"role": "assistant", "content": "refund"},
        {"role": "user", "content": "That is wrong, try again."},
    ]
    stored(engine, first)
    answer = {"role": "assistant", "content": "billing"}
    assert stored(engine, exchange(reask, answer, at=START + 40 * SECOND)) == 0
    assert suspect(engine, first.id) is None


def test_instructor_reasking_through_the_proxy_makes_the_first_answer_suspect(
    proxy: RunningProxy,
) -> None:
    """instructor's TOOLS mode: the answer's tool call sent back, then one tool turn per
    call saying what failed validation."""
    client = proxy.client()
    ask: Callable[..., Any] = client.chat.completions.create
    headers = {"X-Stillroom-Task": TASK}
    tool_choice: Any = {"type": "function", "function": {"name": "Intent"}}
    messages: list[Any] = list(QUESTION)
    first = ask(
        model="gpt-4o-mini",
        messages=messages,
        tools=TOOLS,
        tool_choice=tool_choice,
        extra_headers=headers,
    )
    message = first.choices[0].message
    dumped = {"role": "assistant", "content": message.content or ""}
    dumped["tool_calls"] = message.model_dump()["tool_calls"]
    messages = [*messages, dumped]
    for call in message.tool_calls:
        messages.append(
            {
                "role": "tool",
                "tool_call_id": call.id,
                "name": call.function.name,
                "content": COMPLAINT,
            }
        )
    ask(
        model="gpt-4o-mini",
        messages=messages,
        tools=TOOLS,
        tool_choice=tool_choice,
        extra_headers=headers,
    )
    stored_exchanges(proxy.engine, 2)

    def reask_found() -> bool:
        with Session(proxy.engine) as session:
            rows = session.exec(select(Exchange).order_by(col(Exchange.created_at))).all()
            return [e.suspect for e in rows] == ["reask", None]

    wait_until(reask_found)
    counted = proxy.runtime.metrics.registry.get_sample_value(
        "stillroom_suspect_answers_total", {"task": TASK, "reason": "reask"}
    )
    assert counted == 1


def test_what_counts_as_a_complaint_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_REASK_PHRASES", "nope, bad answer")
    rules = RetryRules.of(Settings())
    assert rules.complaint.search("That is a BAD ANSWER.")
    assert not rules.complaint.search("Validation Error found")
