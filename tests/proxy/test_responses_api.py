"""The Responses API through a real proxy with the openai SDK as the client: the
teacher's answers relayed and captured, with their chat view, whole, streamed and parsed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import openai
import pytest
from openai.types.responses import ResponseCompletedEvent
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.settings import Settings

from conftest import RunningProxy
from fakes.teacher import FakeTeacher, Fault
from servers import ServerThread, stored_exchanges
from wire_schema import validate_response, validate_response_stream

INSTRUCTIONS = "Classify the ticket."
TICKET = "My card was charged twice"


def test_response_is_the_teachers_and_is_captured_with_its_chat_view(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    raw = proxy.client(api_key="sk-secret").responses.with_raw_response.create(
        model="gpt-4o-mini", instructions=INSTRUCTIONS, input=TICKET
    )
    response = raw.parse()
    validate_response(json.loads(raw.http_response.content))
    assert response.output_text == f"Answer to: {TICKET}"
    assert raw.headers["x-stillroom-served-by"] == "teacher"
    assert raw.headers["x-stillroom-task"].startswith("auto-")
    assert raw.headers["x-request-id"] == "req_fake"

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status, exchange.served_by) == ("responses", "ok", "teacher")
    assert exchange.request["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": TICKET},
    ]
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == response.output_text
    assert exchange.finish_reason == "stop"
    assert exchange.client_request == json.loads(teacher.responses_requests()[0].body)
    assert exchange.client_response == json.loads(raw.http_response.content)
    assert exchange.response_id == response.id
    assert response.usage is not None
    assert exchange.prompt_tokens == response.usage.input_tokens
    assert exchange.completion_tokens == response.usage.output_tokens
    assert exchange.cost_usd is not None
    assert exchange.cost_usd > 0
    assert "sk-secret" not in json.dumps([exchange.client_request, exchange.client_response])


def test_stream_arrives_as_events_and_is_reassembled_in_the_store(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    events = list(
        proxy.client().responses.create(
            model="gpt-4o-mini", instructions=INSTRUCTIONS, input=TICKET, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == f"Answer to: {TICKET}"
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    final = completed.response
    assert final.output_text == text

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.stream
    assert (exchange.dialect, exchange.status) == ("responses", "ok")
    assert exchange.response is not None
    assert exchange.response["choices"][0]["message"]["content"] == final.output_text
    assert exchange.response_id == final.id
    assert exchange.client_response is not None
    assert exchange.client_response["status"] == "completed"
    assert exchange.prompt_tokens is not None
    assert exchange.prompt_tokens > 0
    assert exchange.first_chunk_ms is not None


class Ticket(BaseModel):
    category: str
    urgent: str


def test_parse_with_a_pydantic_model_is_captured_with_its_schema(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    parsed = proxy.client().responses.parse(
        model="gpt-4o-mini", instructions=INSTRUCTIONS, input=TICKET, text_format=Ticket
    )
    assert parsed.output_parsed == Ticket(category="value of category", urgent="value of urgent")

    [exchange] = stored_exchanges(proxy.engine, 1)
    response_format = exchange.request["response_format"]
    assert response_format["type"] == "json_schema"
    assert set(response_format["json_schema"]["schema"]["properties"]) == {"category", "urgent"}
    assert exchange.response is not None
    content = exchange.response["choices"][0]["message"]["content"]
    assert Ticket.model_validate_json(content) == parsed.output_parsed


def test_function_call_answer_is_captured_as_tool_calls(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    tool = {
        "type": "function",
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
    response = proxy.client().responses.create(model="gpt-4o-mini", input=TICKET, tools=[tool])
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "lookup_order"

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.finish_reason == "tool_calls"
    assert exchange.request["tools"][0]["function"]["name"] == "lookup_order"
    assert exchange.response is not None
    [stored_call] = exchange.response["choices"][0]["message"]["tool_calls"]
    assert stored_call["function"] == {"name": "lookup_order", "arguments": call.arguments}


def test_task_header_names_the_task(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    raw = proxy.client().responses.with_raw_response.create(
        model="gpt-4o-mini", input=TICKET, extra_headers={"X-Stillroom-Task": "tickets"}
    )
    assert raw.headers["x-stillroom-task"] == "tickets"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.task == "tickets"
    assert "x-stillroom-task" not in teacher.responses_requests()[0].headers


def test_requests_of_one_template_share_a_derived_task(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    client = proxy.client()
    tasks = {
        client.responses.with_raw_response.create(
            model="gpt-4o-mini", instructions=INSTRUCTIONS, input=text
        ).headers["x-stillroom-task"]
        for text in ("one ticket", "another ticket")
    }
    other = client.responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="Summarise the ticket.", input="one ticket"
    )
    assert len(tasks) == 1
    assert other.headers["x-stillroom-task"] not in tasks


def test_teacher_error_is_passed_on_with_its_status_and_retry_after(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(status=429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client().responses.create(model="gpt-4o-mini", input=TICKET)
    assert caught.value.response.headers["retry-after"] == "7"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", 429)


@pytest.mark.parametrize(
    ("field", "value"), [("stream", "yes"), ("input", 7), ("max_output_tokens", "2")]
)
def test_wrong_types_get_an_openai_400_and_never_reach_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher, field: str, value: object
) -> None:
    body = {"model": "gpt-4o-mini", "input": TICKET, field: value}
    response = httpx.post(
        proxy.url + "/v1/responses", json=body, headers={"authorization": "Bearer sk-client"}
    )
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert teacher.responses_requests() == []


def test_get_and_delete_of_a_teachers_response_reach_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    client = proxy.client()
    created = client.responses.create(model="gpt-4o-mini", input=TICKET)
    assert client.responses.retrieve(created.id).output_text == created.output_text
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    methods = [(r.method, r.path) for r in teacher.requests]
    path = f"/v1/responses/{created.id}"
    assert methods[1:] == [("GET", path), ("DELETE", path), ("GET", path)]


# --- a teacher whose stream breaks ----------------------------------------------------------

BROKEN_STREAM = [
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
    b'"response":{"id":"resp_broken","object":"response","created_at":1,"status":"in_progress",'
    b'"model":"gpt-4o-mini","output":[]}}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta"\n\n',
    b'event: response.completed\ndata: {"type":"response.completed","sequence_number":2,'
    b'"response":{"id":"resp_broken","object":"response","created_at":1,"status":"completed",'
    b'"model":"gpt-4o-mini","output":[]}}\n\n',
]


async def _broken(_request: Request) -> Response:
    async def events() -> AsyncIterator[bytes]:
        for event in BROKEN_STREAM:
            yield event

    return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture
def broken_teacher() -> Iterator[str]:
    server = ServerThread(Starlette(routes=[Route("/v1/responses", _broken, methods=["POST"])]))
    yield server.start().url
    server.stop()


def test_malformed_stream_event_ends_the_stream_and_is_not_a_training_pair(
    broken_teacher: str,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=broken_teacher + "/v1"))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/responses",
        json={"model": "gpt-4o-mini", "input": TICKET, "stream": True},
        headers={"authorization": "Bearer sk-client"},
    ) as response:
        body = response.read()
    assert b"response.completed" not in body, "nothing relayed after the malformed event"
    last = body.strip().split(b"\n\n")[-1]
    assert last.startswith(b"event: error\n")
    error = json.loads(last.split(b"data: ", 1)[1])
    assert (error["type"], error["code"]) == ("error", "teacher_stream_malformed")

    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "error"
    assert exchange.finish_reason is None


def test_a_request_naming_only_a_prompt_template_reaches_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    body = {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_123", "variables": {"x": "y"}}}
    response = httpx.post(
        proxy.url + "/v1/responses", json=body, headers={"authorization": "Bearer sk-client"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-stillroom-served-by"] == "teacher"
    assert teacher.responses_requests()[0].json() == body
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.dialect, exchange.status) == ("responses", "ok")


def test_a_stream_the_teacher_cuts_ends_with_an_error_event_and_is_aborted(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(cut_after=3))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/responses",
        json={"model": "gpt-4o-mini", "input": TICKET, "stream": True},
        headers={"authorization": "Bearer sk-client"},
    ) as response:
        body = response.read()
    validate_response_stream(body)
    events = body.strip().split(b"\n\n")
    assert len(events) == 4, "the three events sent, then the error"
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert (error["type"], error["code"]) == ("error", "teacher_stream_cut")
    assert error["sequence_number"] == 3, "the next in the stream's count"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "aborted"
