"""Importing teacher pairs: OpenAI chat fine-tuning JSONL (tools and tool calls included)
and chat-completion exchange JSONL become a task's imported exchanges, deduplicated, all or
nothing per file, curated for training like captured ones but never counted as requests.
A real proxy on SQLite and Postgres, its admin API over HTTP, and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai.types.chat
import pytest
from sqlmodel import Session, select

from core.embedding import Encoder
from core.settings import Settings
from core.tables import Exchange, Task
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.curation import CurationConfig, curate
from distiller.pipeline import Pipeline
from distiller.scheduler import Distiller

from conftest import RunningProxy
from fakes.teacher import FakeTeacher

TASK = "support"
STILLROOM = str(Path(sys.executable).with_name("stillroom"))
SYSTEM = "Answer the customer in one sentence."
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def start(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
    database_url: str,
) -> Callable[..., RunningProxy]:
    def started(**overrides: Any) -> RunningProxy:
        settings = make_settings(
            database_url=database_url, teacher_url=teacher.url + "/v1", **overrides
        )
        return start_proxy(settings)

    return started


def text_line(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def tool_line(city: str) -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }
    return {
        "messages": [
            {"role": "user", "content": f"What is the weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
        "tools": [WEATHER_TOOL],
        "parallel_tool_calls": False,
    }


def exchange_line(question: str, answer: str) -> dict[str, Any]:
    return {
        "request": {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": question}],
            "stream": True,
        },
        "response": {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
        },
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def post_import(proxy: RunningProxy, task: str, body: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/admin/tasks/{task}/import", content=body, params=params, timeout=30
    )


def stored(proxy: RunningProxy, task: str = TASK) -> list[Exchange]:
    with Session(proxy.engine) as session:
        return list(session.exec(select(Exchange).where(Exchange.task == task)).all())


def test_fine_tuning_lines_with_tool_calls_become_imported_teacher_exchanges(
    start: Callable[..., RunningProxy],
) -> None:
    proxy = start()
    body = jsonl([text_line("Where is my refund?", "It is on its way."), tool_line("Paris")])
    answer = post_import(proxy, TASK, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["imported"] == 2
    rows = {row.request["messages"][-1]["content"]: row for row in stored(proxy)}
    assert all(
        (r.origin, r.served_by, r.status) == ("import", "teacher", "ok") for r in rows.values()
    )
    text = rows["Where is my refund?"]
    assert text.request["messages"][0] == {"role": "system", "content": SYSTEM}
    assert text.response is not None
    completion = openai.types.chat.ChatCompletion.model_validate(text.response)
    assert completion.choices[0].message.content == "It is on its way."
    tool = rows["What is the weather in Paris?"]
    assert tool.request["tools"] == [WEATHER_TOOL]
    assert tool.request["parallel_tool_calls"] is False
    assert tool.response is not None
    called = openai.types.chat.ChatCompletion.model_validate(tool.response).choices[0]
    assert called.finish_reason == "tool_calls"
    assert called.message.tool_calls is not None
    assert called.message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]


def test_exchange_lines_keep_the_request_and_the_teachers_completion(
    start: Callable[..., RunningProxy],
) -> None:
    proxy = start()
    answer = post_import(proxy, TASK, jsonl([exchange_line("Is it open today?", "Yes.")]))
    assert answer.json()["imported"] == 1
    [row] = stored(proxy)
    assert "stream" not in row.request
    assert row.request["model"] == row.model == "gpt-4o-mini"
    assert row.response is not None
    assert row.response["choices"][0]["message"]["content"] == "Yes."
    assert (row.prompt_tokens, row.completion_tokens) == (9, 2)


def test_requests_asked_twice_in_the_file_or_already_stored_are_duplicates(
    start: Callable[..., RunningProxy],
) -> None:
    proxy = start()
    first = post_import(proxy, TASK, jsonl([text_line("A?", "a"), text_line("A?", "b")]))
    assert (first.json()["imported"], first.json()["duplicates"]) == (1, 1)
    again = post_import(proxy, TASK, jsonl([text_line("A?", "c"), text_line("B?", "b")]))
    assert (again.json()["imported"], again.json()["duplicates"]) == (1, 1)
    assert len(stored(proxy)) == 2


def test_a_file_with_invalid_lines_stores_nothing_and_names_each_line(
    start: Callable[..., RunningProxy],
) -> None:
    proxy = start()
    no_answer = {"messages": [{"role": "user", "content": "Hi?"}]}
    body = jsonl([text_line("A?", "a"), b"{not json", no_answer])
    answer = post_import(proxy, TASK, body)
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "line 2: not JSON" in message
    assert "line 3:" in message
    assert "assistant" in message
    assert stored(proxy) == []
    with Session(proxy.engine) as session:
        assert session.get(Task, TASK) is None


def test_skip_invalid_stores_the_valid_lines_and_reports_the_others(
    start: Callable[..., RunningProxy],
) -> None:
    proxy = start()
    weightless = text_line("C?", "c")
    weightless["messages"][-1]["weight"] = 0
    body = jsonl([text_line("A?", "a"), b"[1]", weightless])
    answer = post_import(proxy, TASK, body, skip_invalid="true").json()
    assert (answer["imported"], answer["invalid"], answer["skipped"]) == (1, 1, 1)
    assert answer["errors"] == [{"line": 2, "message": "a line must be a JSON object"}]
    assert len(stored(proxy)) == 1


def test_a_tenants_task_is_created_with_its_tenant(start: Callable[..., RunningProxy]) -> None:
    proxy = start()
    assert post_import(proxy, "support@acme", jsonl([text_line("A?", "a")])).status_code == 200
    with Session(proxy.engine) as session:
        task = session.get(Task, "support@acme")
    assert task is not None
    assert task.tenant == "acme"
    assert [row.tenant for row in stored(proxy, "support@acme")] == ["acme"]


def test_a_file_over_the_size_limit_is_refused(start: Callable[..., RunningProxy]) -> None:
    proxy = start(import_max_bytes=1024)
    body = jsonl([text_line(f"Question {n}?", "a") for n in range(40)])
    assert post_import(proxy, TASK, body).status_code == 413
    assert stored(proxy) == []


def test_imported_pairs_train_the_task_but_are_not_requests(
    start: Callable[..., RunningProxy], tmp_path: Path
) -> None:
    proxy = start()
    lines = [text_line(f"Question {n}?", "yes" if n % 2 else "no") for n in range(30)]
    post_import(proxy, TASK, jsonl(lines))
    curated = curate(stored(proxy), CurationConfig(), embed=None)
    assert len(curated.train) + len(curated.heldout) == 30
    settings = Settings(data_dir=tmp_path / "data", distill_first_pairs=30)
    unused = StudentReplicas([HttpStudentBackend("http://127.0.0.1:9", httpx.AsyncClient())])
    pipeline = Pipeline(settings=settings, engine=proxy.engine, backend=unused, encoder=Encoder())
    assert Distiller(pipeline).due_tasks() == [TASK]
    summary = httpx.get(f"{proxy.url}/admin/tasks/{TASK}", timeout=30).json()
    assert summary["exchanges"]["total"] == 0


def test_an_export_imports_back_as_the_same_pairs(start: Callable[..., RunningProxy]) -> None:
    proxy = start()
    lines = [text_line(f"Question {n}?", f"Answer {n}.") for n in range(6)]
    post_import(proxy, TASK, jsonl([*lines, tool_line("Oslo"), tool_line("Rome")]))
    exported = httpx.get(f"{proxy.url}/admin/tasks/{TASK}/export", timeout=30)
    assert post_import(proxy, "copy", exported.content).json()["imported"] == 8

    def pairs(task: str) -> set[tuple[str, str]]:
        curated = curate(stored(proxy, task), CurationConfig(), embed=None)
        examples = [*curated.train, *curated.heldout]
        return {(json.dumps(e.messages, sort_keys=True), e.answer) for e in examples}

    assert pairs("copy") == pairs(TASK)


def test_cli_import_prints_the_counts(start: Callable[..., RunningProxy], tmp_path: Path) -> None:
    proxy = start()
    file = tmp_path / "pairs.jsonl"
    file.write_bytes(jsonl([text_line("A?", "a"), text_line("A?", "a"), tool_line("Lima")]))
    env = {**os.environ, "STILLROOM_URL": proxy.url, "COLUMNS": "200"}
    done = subprocess.run(
        [STILLROOM, "import", str(file), "--task", TASK],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported 2, duplicate 1" in done.stdout
    assert "invalid 0" in done.stdout
