"""The exact cache on Anthropic's Messages API: an identical deterministic message request
of the same task and key is answered with the teacher's stored message, whole or as
Anthropic's stream of it, which the anthropic SDK parses."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

from core.settings import Settings

from conftest import RunningProxy
from fakes.anthropic import FakeAnthropic
from servers import ServerThread, stored_exchanges

MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Is the shop open on Sundays?"}]
TASK_HEADERS = {"X-Stillroom-Task": "faq"}


@pytest.fixture
def claude() -> Iterator[FakeAnthropic]:
    """An Anthropic teacher answering each call with a new number."""
    fake = FakeAnthropic()
    counter = itertools.count(1)
    fake.responder = lambda payload: f"answer #{next(counter)}"
    server = ServerThread(fake.app).start()
    fake.url = server.url
    yield fake
    server.stop()


Proxied = tuple[RunningProxy, anthropic.Anthropic]


def proxied(
    url: str,
    claude: FakeAnthropic,
    start: Callable[..., RunningProxy],
    settings: Callable[..., Settings],
) -> Iterator[Proxied]:
    """A proxy on the store at ``url`` with the cache on, in front of the Anthropic
    teacher, and the SDK's client of it."""
    proxy = start(settings(anthropic_url=claude.url, database_url=url, cache_seconds=60))
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client", max_retries=0)
    yield proxy, client
    client.close()


@pytest.fixture
def sdk(
    database_url: str,
    claude: FakeAnthropic,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Iterator[Proxied]:
    """On SQLite and on Postgres."""
    yield from proxied(database_url, claude, start_proxy, make_settings)


@pytest.fixture
def sdk_on_sqlite(
    sqlite_url: str,
    claude: FakeAnthropic,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> Iterator[Proxied]:
    """On SQLite only: the stream is written above the store's query."""
    yield from proxied(sqlite_url, claude, start_proxy, make_settings)


def create(client: anthropic.Anthropic) -> tuple[str, anthropic.types.Message]:
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=MESSAGES,
        extra_body={"temperature": 0},  # this SDK no longer names it
        extra_headers=TASK_HEADERS,
    )
    return raw.headers["x-stillroom-served-by"], raw.parse()


def test_identical_deterministic_message_is_answered_from_cache(
    sdk: Proxied, claude: FakeAnthropic
) -> None:
    proxy, client = sdk
    _, first = create(client)
    stored_exchanges(proxy.engine, 1)
    served, again = create(client)
    assert served == "cache"
    assert len(claude.message_requests()) == 1
    assert again.content == first.content
    assert again.content[0].type == "text"
    assert again.content[0].text == "answer #1"
    assert again.usage == first.usage
    assert again.id != first.id
    [_, hit] = sorted(stored_exchanges(proxy.engine, 2), key=lambda e: e.created_at)
    assert (hit.served_by, hit.dialect, hit.cost_usd) == ("cache", "messages", 0)


def test_streamed_message_is_served_from_a_cached_whole_one_as_a_stream(
    sdk_on_sqlite: Proxied, claude: FakeAnthropic
) -> None:
    proxy, client = sdk_on_sqlite
    create(client)
    stored_exchanges(proxy.engine, 1)
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=MESSAGES,
        extra_body={"temperature": 0},  # this SDK no longer names it
        extra_headers=TASK_HEADERS,
    ) as stream:
        assert stream.response.headers["x-stillroom-served-by"] == "cache"
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "answer #1"
    assert final.stop_reason == "end_turn"
    assert len(claude.message_requests()) == 1
