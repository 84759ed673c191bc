"""The exact cache: an identical deterministic request of the same task and client key is
answered from the teacher's stored answer, as JSON or as a stream, recorded at zero cost
and never trained on; off by default, per task through the admin API, never across keys."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from sqlmodel import Session, col

from core.embedding import Encoder
from core.settings import Settings
from core.store import list_exchanges
from core.tables import Exchange
from distiller.backends import HttpStudentBackend, StudentReplicas
from distiller.curation import CurationConfig, curate
from distiller.pipeline import Pipeline
from distiller.scheduler import Distiller

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import stored_exchanges, wait_until

TASK = "faq"
MODEL = "gpt-4o-mini"
QUESTION = [{"role": "user", "content": "What are your opening hours?"}]


@pytest.fixture
def numbered(teacher: FakeTeacher) -> FakeTeacher:
    """The teacher, answering each call with a new number: an answer told apart from
    every other."""
    counter = itertools.count(1)
    teacher.responder = lambda payload: f"answer #{next(counter)}"
    return teacher


Starter = Callable[..., RunningProxy]


def starter(
    url: str, teacher: FakeTeacher, make_settings: Callable[..., Settings], start_proxy: Starter
) -> Starter:
    """Starts a proxy on the store at ``url`` in front of ``teacher``, with these settings."""

    def started(**overrides: Any) -> RunningProxy:
        settings = make_settings(
            teacher_url=teacher.url + "/v1",
            database_url=url,
            policy_refresh_seconds=0.1,
            **overrides,
        )
        return start_proxy(settings)

    return started


@pytest.fixture
def start(
    database_url: str,
    numbered: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Starter,
) -> Starter:
    """On SQLite and on Postgres: for what the store's query decides."""
    return starter(database_url, numbered, make_settings, start_proxy)


@pytest.fixture
def start_on_sqlite(
    sqlite_url: str,
    numbered: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Starter,
) -> Starter:
    """On SQLite only: for what the proxy decides around the query (kept short in CI)."""
    return starter(sqlite_url, numbered, make_settings, start_proxy)


def ask(
    client: openai.OpenAI, *, temperature: float | None = 0, seed: int | None = None
) -> tuple[str, Any]:
    """One chat completion of the task: who served it, and the answer."""
    options: dict[str, Any] = {}
    if temperature is not None:
        options["temperature"] = temperature
    if seed is not None:
        options["seed"] = seed
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers={"X-Stillroom-Task": TASK}, **options
    )
    return raw.headers["x-stillroom-served-by"], raw.parse()


def ask_streamed(client: openai.OpenAI, *, include_usage: bool) -> tuple[str, list[Any]]:
    """The same request as :func:`ask`, streamed: who served it, and its chunks as the
    SDK parsed them."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=QUESTION,
        temperature=0,
        stream=True,
        stream_options={"include_usage": include_usage},
        extra_headers={"X-Stillroom-Task": TASK},
    )
    return raw.headers["x-stillroom-served-by"], list(raw.parse())


def answered(proxy: RunningProxy, count: int) -> list[Exchange]:
    """The task's exchanges once ``count`` are stored, oldest first."""
    found = stored_exchanges(proxy.engine, count)
    return sorted(found, key=lambda exchange: exchange.created_at)


def patch(proxy: RunningProxy, **changes: Any) -> dict[str, Any]:
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json=changes)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def cache_window(proxy: RunningProxy) -> float:
    return float(proxy.runtime.policies.get(TASK).cache_seconds)


def test_cache_is_off_by_default(start_on_sqlite: Starter, numbered: FakeTeacher) -> None:
    proxy = start_on_sqlite()
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    served, completion = ask(client)
    assert served == "teacher"
    assert completion.choices[0].message.content == "answer #2"
    assert len(numbered.chat_requests()) == 2


def test_identical_deterministic_request_is_answered_from_cache(
    start: Starter, numbered: FakeTeacher
) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    _, first = ask(client)
    answered(proxy, 1)
    served, again = ask(client)
    assert served == "cache"
    assert len(numbered.chat_requests()) == 1
    assert again.choices[0].message.content == first.choices[0].message.content == "answer #1"
    assert again.usage == first.usage
    assert again.model == first.model
    assert again.id != first.id  # a new completion for clients that tell answers apart by id


def test_request_with_a_seed_is_answered_from_cache(
    start_on_sqlite: Starter, numbered: FakeTeacher
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client, temperature=0.7, seed=7)
    answered(proxy, 1)
    served, again = ask(client, temperature=0.7, seed=7)
    assert served == "cache"
    assert again.choices[0].message.content == "answer #1"


def test_request_with_temperature_and_no_seed_is_never_cached(
    start_on_sqlite: Starter, numbered: FakeTeacher
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client, temperature=0.7)
    answered(proxy, 1)
    served, again = ask(client, temperature=0.7)
    assert served == "teacher"
    assert again.choices[0].message.content == "answer #2"


def test_answer_older_than_the_window_is_not_served(start: Starter, numbered: FakeTeacher) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    ask(client)
    [first] = answered(proxy, 1)
    with proxy.engine.begin() as connection:
        connection.execute(
            sa.update(Exchange)
            .where(col(Exchange.id) == first.id)
            .values(created_at=datetime.now(UTC) - timedelta(seconds=61))
        )
    served, again = ask(client)
    assert served == "teacher"
    assert again.choices[0].message.content == "answer #2"


def test_admin_turns_the_cache_on_for_one_task(start: Starter, numbered: FakeTeacher) -> None:
    proxy = start()
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    assert patch(proxy, cache_seconds=300)["cache"]["window_seconds"] == 300
    detail = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    assert detail["cache_seconds"] == 300
    wait_until(lambda: cache_window(proxy) == 300)
    served, again = ask(client)
    assert served == "cache"
    assert again.choices[0].message.content == "answer #1"


def test_admin_turns_the_cache_off_for_one_task_and_null_restores_the_setting(
    start_on_sqlite: Starter, numbered: FakeTeacher
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    assert patch(proxy, cache_seconds=0)["cache"]["window_seconds"] == 0
    wait_until(lambda: cache_window(proxy) == 0)
    assert ask(client)[0] == "teacher"
    assert patch(proxy, cache_seconds=None)["cache"]["window_seconds"] == 60
    wait_until(lambda: cache_window(proxy) == 60)
    assert ask(client)[0] == "cache"


def test_admin_refuses_a_negative_window(proxy: RunningProxy) -> None:
    ask(proxy.client())
    answered(proxy, 1)
    response = httpx.patch(proxy.url + f"/admin/tasks/{TASK}", json={"cache_seconds": -1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "cache_seconds"


def test_streamed_request_is_served_from_a_cached_whole_answer_as_a_stream(
    start_on_sqlite: Starter, numbered: FakeTeacher
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    _, whole = ask(client)
    answered(proxy, 1)
    served, chunks = ask_streamed(client, include_usage=True)
    assert served == "cache"
    assert len(numbered.chat_requests()) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "answer #1"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == whole.usage


def test_streamed_cached_answer_has_no_usage_chunk_unless_asked(
    start_on_sqlite: Starter,
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    served, chunks = ask_streamed(client, include_usage=False)
    assert served == "cache"
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_whole_request_is_served_from_a_cached_streamed_answer(
    start_on_sqlite: Starter, numbered: FakeTeacher
) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    assert ask_streamed(client, include_usage=False)[0] == "teacher"
    answered(proxy, 1)
    served, whole = ask(client)
    assert served == "cache"
    assert len(numbered.chat_requests()) == 1
    assert whole.choices[0].message.content == "answer #1"
    assert whole.choices[0].finish_reason == "stop"


def test_clients_with_different_keys_never_get_each_others_answers(
    start: Starter, numbered: FakeTeacher
) -> None:
    proxy = start(cache_seconds=60)
    alice, bob = proxy.client(api_key="sk-alice"), proxy.client(api_key="sk-bob")
    ask(alice)
    answered(proxy, 1)
    served, answer = ask(bob)
    assert (served, answer.choices[0].message.content) == ("teacher", "answer #2")
    answered(proxy, 2)
    assert ask(alice)[1].choices[0].message.content == "answer #1"
    assert ask(bob)[1].choices[0].message.content == "answer #2"
    assert len(numbered.chat_requests()) == 2


def test_answer_marked_bad_is_not_served(start_on_sqlite: Starter) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client)
    [first] = answered(proxy, 1)
    with proxy.engine.begin() as connection:
        connection.execute(
            sa.update(Exchange).where(col(Exchange.id) == first.id).values(feedback="bad")
        )
    assert ask(client)[0] == "teacher"


def test_answer_a_cache_hit_was_marked_bad_for_is_not_served_again(
    start: Starter,
) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    assert ask(client)[0] == "cache"
    _, hit = answered(proxy, 2)
    with proxy.engine.begin() as connection:
        connection.execute(
            sa.update(Exchange).where(col(Exchange.id) == hit.id).values(feedback="bad")
        )
    served, again = ask(client)
    assert (served, again.choices[0].message.content) == ("teacher", "answer #2")


def test_deleted_answer_is_never_served_again(start_on_sqlite: Starter) -> None:
    proxy = start_on_sqlite(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    with proxy.engine.begin() as connection:
        connection.execute(sa.delete(Exchange))
    served, again = ask(client)
    assert (served, again.choices[0].message.content) == ("teacher", "answer #2")


def test_cache_hit_is_recorded_at_zero_cost_and_is_no_training_pair(
    start: Starter,
) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    ask(client)
    teacher_answer, hit = answered(proxy, 2)
    assert (teacher_answer.served_by, hit.served_by) == ("teacher", "cache")
    assert (teacher_answer.cost_usd or 0) > 0
    assert hit.cost_usd == 0
    assert hit.request_hash == teacher_answer.request_hash
    with Session(proxy.engine) as session:
        curated = curate(list(list_exchanges(session=session)), CurationConfig(), embed=None)
    assert len(curated.train) + len(curated.heldout) == 1
    assert curated.excluded["cache_answer"] == 1


def test_cache_hits_do_not_make_a_task_due_for_training(start: Starter, tmp_path: Path) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    ask(client)
    answered(proxy, 1)
    ask(client)
    answered(proxy, 2)
    settings = Settings(data_dir=tmp_path / "data", distill_first_pairs=2)
    unused = StudentReplicas([HttpStudentBackend("http://127.0.0.1:9", httpx.AsyncClient())])
    pipeline = Pipeline(settings=settings, engine=proxy.engine, backend=unused, encoder=Encoder())
    assert Distiller(pipeline).due_tasks() == []


def test_metrics_and_admin_count_the_cache_as_its_own_path(
    start: Starter,
) -> None:
    proxy = start(cache_seconds=60)
    client = proxy.client()
    ask(client)
    [first] = answered(proxy, 1)
    ask(client)
    answered(proxy, 2)
    registry = proxy.runtime.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        value: float | None = registry.get_sample_value(name, {"task": TASK, **labels})
        return value

    assert sample("stillroom_requests_total", served_by="cache", status="ok") == 1
    assert sample("stillroom_requests_total", served_by="teacher", status="ok") == 1
    assert sample("stillroom_cost_usd_total", served_by="cache") == 0
    assert sample("stillroom_cache_savings_usd_total") == pytest.approx(first.cost_usd)
    assert sample("stillroom_savings_usd_total") in (None, 0)
    detail = httpx.get(proxy.url + f"/admin/tasks/{TASK}").json()
    assert detail["served_by"] == {"teacher": 1, "cache": 1}
    assert detail["cache"]["exchanges"] == 1
    assert detail["cache"]["savings_usd"] == pytest.approx(first.cost_usd)
