"""What stillroom keeps of a student's responses and who may read it back, through a real
proxy with the openai SDK as the client: ``store: false`` honoured as OpenAI honours it,
the input items listed in OpenAI's shape, and a response readable only with the key that
made it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import ResponseInputMessageItem
from sqlmodel import Session, select

from core.tables import Exchange
from distiller.curation import answer_of
from proxy.gateway.stored_responses import is_student_response_id, student_response_id

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from fakes.vllm import FakeVllm
from routing_support import SYSTEM, TASK, routes_by_the_store, set_policy
from servers import stored_exchanges, wait_until
from wire_schema import validate_error, validate_input_items

INSTRUCTIONS = SYSTEM["content"]
TASK_HEADER = {"X-Stillroom-Task": TASK}


@pytest.fixture
def live(routed_proxy: Callable[..., RunningProxy], database_url: str) -> RunningProxy:
    """A proxy whose task's student answers every Responses request (on SQLite, and on
    Postgres)."""
    proxy = routed_proxy(database_url=database_url)
    set_policy(proxy, mode="live", cutover_percent=100, audit_percent=0)
    return proxy


def create(proxy: RunningProxy, api_key: str = "sk-client", **extra: Any) -> Any:
    extra.setdefault("input", "my bill is wrong")
    return proxy.client(api_key=api_key).responses.with_raw_response.create(
        model="gpt-4o-mini", instructions=INSTRUCTIONS, extra_headers=TASK_HEADER, **extra
    )


def get(proxy: RunningProxy, path: str, api_key: str | None = "sk-client") -> httpx.Response:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.get(proxy.url + path, headers=headers, timeout=10)


# --- store: false ----------------------------------------------------------------------------


def test_a_store_false_response_is_not_retrievable_yet_is_recorded(
    live: RunningProxy, teacher: FakeTeacher
) -> None:
    raw = create(live, store=False)
    assert raw.headers["x-stillroom-served-by"] == "student"
    response = raw.parse()
    assert response.store is False
    with pytest.raises(openai.NotFoundError) as caught:
        live.client().responses.retrieve(response.id)
    validate_error(caught.value.response.json())
    assert response.id in caught.value.response.json()["error"]["message"]
    assert get(live, f"/v1/responses/{response.id}/input_items").status_code == 404
    assert teacher.requests == [], "stillroom knows it holds none: the teacher is not asked"

    [exchange] = stored_exchanges(live.engine, 1)
    assert (exchange.served_by, exchange.status) == ("student", "ok")
    assert exchange.client_request is not None
    assert exchange.client_request["store"] is False


def test_a_store_false_response_cannot_be_continued(
    live: RunningProxy, teacher: FakeTeacher
) -> None:
    first = create(live, store=False).parse()
    with pytest.raises(openai.BadRequestError) as caught:
        create(live, input="and the refund?", previous_response_id=first.id)
    error = caught.value.response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "previous_response_id",
        "previous_response_not_found",
    )
    assert error["message"] == f"Previous response with id '{first.id}' not found."
    assert teacher.requests == []


def test_a_teachers_store_false_answer_is_still_a_training_pair(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    response = proxy.client().responses.create(model="gpt-4o-mini", input="hello", store=False)
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert answer_of(exchange) == (response.output_text, "ok")


# --- input items -----------------------------------------------------------------------------

CONVERSATION = [
    {"role": "user", "content": "my bill is wrong"},
    {"role": "assistant", "content": "Which bill?"},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "May's"}]},
]


def test_input_items_of_a_students_response_are_listed_as_openai_lists_them(
    live: RunningProxy, teacher: FakeTeacher
) -> None:
    created = create(live, input=CONVERSATION).parse()
    listed = get(live, f"/v1/responses/{created.id}/input_items")
    assert listed.status_code == 200, listed.text
    validate_input_items(listed.json())
    body = listed.json()
    said = [(item["role"], item["content"][0]["text"]) for item in body["data"]]
    assert said == [("user", "May's"), ("assistant", "Which bill?"), ("user", "my bill is wrong")]
    assert [item["content"][0]["type"] for item in body["data"]] == [
        "input_text",
        "output_text",
        "input_text",
    ]
    assert (body["first_id"], body["last_id"]) == (body["data"][0]["id"], body["data"][-1]["id"])
    assert body["has_more"] is False

    pages = live.client().responses.input_items.list(created.id, order="asc", limit=2)
    assert len(pages.data) == 2
    every = [item.id for item in pages]  # every page, one after another
    assert every == [item["id"] for item in reversed(body["data"])], "the same ids, page by page"
    assert teacher.requests == []


def test_a_string_input_is_listed_as_one_user_message(live: RunningProxy) -> None:
    created = create(live).parse()
    [item] = live.client().responses.input_items.list(created.id).data
    assert isinstance(item, ResponseInputMessageItem)
    assert item.role == "user"
    assert [(part.type, getattr(part, "text", None)) for part in item.content] == [
        ("input_text", "my bill is wrong")
    ]


def test_input_items_of_a_teachers_response_come_from_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    created = proxy.client().responses.create(model="gpt-4o-mini", input="hello")
    echoed = get(proxy, f"/v1/responses/{created.id}/input_items?limit=5")
    assert echoed.json()["path"] == f"/v1/responses/{created.id}/input_items"
    assert echoed.json()["query"] == "limit=5"


@pytest.mark.parametrize(("query", "param"), [("limit=0", "limit"), ("order=up", "order")])
def test_bad_paging_gets_an_openai_400(live: RunningProxy, query: str, param: str) -> None:
    created = create(live).parse()
    answer = get(live, f"/v1/responses/{created.id}/input_items?{query}")
    assert answer.status_code == 400
    validate_error(answer.json())
    assert answer.json()["error"]["param"] == param


# --- whose response it is --------------------------------------------------------------------


def test_a_students_response_is_read_only_with_the_key_that_made_it(
    live: RunningProxy, teacher: FakeTeacher
) -> None:
    created = create(live, api_key="sk-alice").parse()
    path = f"/v1/responses/{created.id}"
    for who in ("sk-mallory", None):
        for asked in (path, path + "/input_items"):
            refused = get(live, asked, api_key=who)
            assert refused.status_code == 404, (who, asked)
            validate_error(refused.json())
    deleting = httpx.delete(
        live.url + path, headers={"authorization": "Bearer sk-mallory"}, timeout=10
    )
    assert deleting.status_code == 404
    with pytest.raises(openai.BadRequestError, match="Previous response with id"):
        create(live, api_key="sk-mallory", previous_response_id=created.id)
    assert teacher.requests == []

    alice = live.client(api_key="sk-alice")
    assert alice.responses.retrieve(created.id).output_text == "billing", "still there"
    follow_up = create(live, api_key="sk-alice", previous_response_id=created.id)
    assert follow_up.headers["x-stillroom-served-by"] == "student"


def test_the_key_is_kept_only_as_a_hash(live: RunningProxy) -> None:
    created = create(live, api_key="sk-alice").parse()
    fetched = get(live, f"/v1/responses/{created.id}", api_key="sk-alice")
    assert "_stillroom" not in fetched.text, "stillroom's own mark is never sent"
    [exchange] = stored_exchanges(live.engine, 1)
    assert "sk-alice" not in json.dumps([exchange.client_request, exchange.client_response])


# --- several replicas ------------------------------------------------------------------------


def test_a_students_response_id_looks_like_openais_yet_is_told_apart() -> None:
    made = student_response_id()
    assert made.startswith("resp_")
    assert len(made) == len("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
    assert is_student_response_id(made)
    assert not is_student_response_id("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")


def test_a_follow_up_on_another_replica_waits_for_the_first_replicas_write(
    routed_proxy: Callable[..., RunningProxy],
    start_proxy: Callable[..., RunningProxy],
    vllm: FakeVllm,
    teacher: FakeTeacher,
    database_url: str,
) -> None:
    first_replica = routed_proxy(database_url=database_url, capture_flush_seconds=1.5)
    second_replica = start_proxy(first_replica.settings)
    set_policy(first_replica, mode="live", cutover_percent=100, audit_percent=0)
    wait_until(lambda: routes_by_the_store(second_replica))

    first = create(first_replica, input="bill?").parse()
    with Session(first_replica.engine) as session:
        written = session.exec(select(Exchange).where(Exchange.response_id == first.id)).all()
    assert written == [], "the first replica's batch is still open"
    second = create(second_replica, input="again?", previous_response_id=first.id)
    assert second.headers["x-stillroom-served-by"] == "student"
    asked = vllm.chat_requests()[-1].body["messages"]
    assert [(m["role"], m["content"]) for m in asked[1:]] == [
        ("user", "bill?"),
        ("assistant", "billing"),
        ("user", "again?"),
    ]
    assert teacher.requests == [], "nobody took it for the teacher's"
