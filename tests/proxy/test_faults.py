"""Teacher faults reach the client as the teacher meant them, or as clear OpenAI errors."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from llmock.scenarios import Fail, StreamFault
from llmock.testing import LLMockServer

from core.settings import Settings
from distiller.curation import answer_of

from conftest import RunningProxy
from fakes.teacher import FakeTeacher, Fault
from servers import free_port, stored_exchanges, wait_until
from wire_schema import validate_chat_chunk, validate_error, validate_sse_stream

MESSAGES = [{"role": "user", "content": "Cancel my subscription"}]


@pytest.fixture
def llmock_server() -> Iterator[LLMockServer]:
    server = LLMockServer(host="127.0.0.1", port=free_port()).start()
    yield server
    server._server.force_exit = True
    server.stop()


@pytest.fixture
def llmock_proxy(
    llmock_server: LLMockServer,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> RunningProxy:
    return start_proxy(make_settings(teacher_url=llmock_server.base_url("openai")))


def test_teacher_429_reaches_the_sdk_with_retry_after(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(
        Fault(status=429, headers={"retry-after": "7", "x-ratelimit-reset-requests": "7s"})
    )
    with pytest.raises(openai.RateLimitError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    response = caught.value.response
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-ratelimit-reset-requests"] == "7s"
    validate_error(response.json())
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", 429)


def test_sdk_retries_teacher_429s_through_the_proxy_and_succeeds(
    llmock_proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    llmock_server.state.scenarios.add(Fail(429, retry_after=0.2, times=2))
    started = time.monotonic()
    result = llmock_proxy.client(max_retries=2).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert result.choices[0].message.content
    assert time.monotonic() - started >= 0.4, "the SDK waited as retry-after said"
    exchanges = stored_exchanges(llmock_proxy.engine, 3)
    assert sorted(e.http_status for e in exchanges) == [200, 429, 429]


def test_teacher_500_is_passed_on(llmock_proxy: RunningProxy, llmock_server: LLMockServer) -> None:
    llmock_server.state.scenarios.add(Fail(500))
    with pytest.raises(openai.InternalServerError) as caught:
        llmock_proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 500
    validate_error(caught.value.response.json())


def test_teacher_error_that_is_not_json_becomes_an_openai_error(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(status=502, body=b"<html>bad gateway</html>"))
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    validate_error(body)
    assert "bad gateway" in body["error"]["message"]


def test_teacher_too_slow_gives_504(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", teacher_read_timeout=0.3))
    teacher.faults.append(Fault(delay=2.0))
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 504
    body = caught.value.response.json()
    validate_error(body)
    assert body["error"]["code"] == "teacher_timeout"
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert (exchange.status, exchange.http_status) == ("error", 504)


def test_teacher_unreachable_gives_502(
    make_settings: Callable[..., Settings], start_proxy: Callable[[Settings], RunningProxy]
) -> None:
    proxy = start_proxy(make_settings(teacher_url=f"http://127.0.0.1:{free_port()}/v1"))
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    validate_error(body)
    assert body["error"]["code"] == "teacher_unreachable"


def _stream_body(proxy: RunningProxy) -> bytes:
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        return response.read()


def test_stream_cut_by_the_teacher_ends_with_an_error_and_is_not_a_training_pair(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(cut_after=3))
    events = validate_sse_stream(_stream_body(proxy))
    assert events[-1]["error"]["code"] == "teacher_stream_cut"
    assert len(events) == 4
    teacher.faults.append(Fault(cut_after=3))
    stream = proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        list(stream)
    exchanges = stored_exchanges(proxy.engine, 2)
    assert {e.status for e in exchanges} == {"aborted"}


def test_stream_truncated_without_done_is_reported(
    llmock_proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    llmock_server.state.scenarios.add(StreamFault("truncate", after_chunks=3))
    events = validate_sse_stream(_stream_body(llmock_proxy))
    assert events[-1]["error"]["code"] == "teacher_stream_cut"
    [exchange] = stored_exchanges(llmock_proxy.engine, 1)
    assert exchange.status == "aborted"


def test_malformed_chunk_mid_stream_ends_it_with_an_error_and_is_not_a_training_pair(
    llmock_proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    llmock_server.state.scenarios.add(StreamFault("malformed", after_chunks=2))
    events = _stream_body(llmock_proxy).split(b"\n\n")
    assert events[-1] == b"", "every event is terminated"
    *relayed, error_event = events[:-1]
    good, malformed = relayed[:2], relayed[2]
    for chunk in good:
        validate_chat_chunk(json.loads(chunk.removeprefix(b"data: ")))
    with pytest.raises(json.JSONDecodeError):  # passed on as the teacher sent it
        json.loads(malformed.removeprefix(b"data: "))
    assert len(relayed) == 3, "nothing after the malformed chunk, no [DONE]"
    error = json.loads(error_event.removeprefix(b"data: "))
    validate_error(error)
    assert error["error"]["code"] == "teacher_stream_malformed"
    [exchange] = stored_exchanges(llmock_proxy.engine, 1)
    assert exchange.status == "error"
    assert answer_of(exchange) == (None, "error")


def test_sdk_fails_at_a_malformed_chunk_as_it_would_at_the_teacher(
    llmock_proxy: RunningProxy, llmock_server: LLMockServer
) -> None:
    llmock_server.state.scenarios.add(StreamFault("malformed", after_chunks=2, times=2))
    with openai.OpenAI(base_url=llmock_server.base_url("openai"), api_key="k") as direct:
        stream = direct.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        with pytest.raises(json.JSONDecodeError):
            list(stream)
    stream = llmock_proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    with pytest.raises(json.JSONDecodeError):
        list(stream)


def test_stream_stalled_past_the_read_timeout_is_reported(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", teacher_read_timeout=0.3))
    teacher.faults.append(Fault(event_interval=1.0))
    events = validate_sse_stream(_stream_body(proxy))
    assert events[-1]["error"]["code"] == "teacher_timeout"


def test_client_disconnect_mid_stream_cancels_the_teacher_call(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(event_interval=0.3))
    with httpx.stream(
        "POST",
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
    ) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    assert teacher.cancelled.wait(5), "the teacher's stream was not cancelled"
    assert not teacher.stream_finished.is_set()
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.status == "aborted"
    assert exchange.response is not None
    assert exchange.response["choices"][0]["finish_reason"] is None


def test_client_disconnect_while_waiting_aborts_the_exchange(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    teacher.faults.append(Fault(delay=3.0))
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        proxy.client(timeout=0.5).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert time.monotonic() - started < 2.5, "recorded before the teacher answered"
    assert (exchange.status, exchange.http_status) == ("aborted", 499)
    wait_until(lambda: proxy.runtime.metrics.client_disconnects._value.get() == 1)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"", 400, "empty"),
        (json.dumps({"model": "gpt-4o-mini", "messages": "hi"}).encode(), 400, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "model"),
        (
            json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            400,
            "messages.0.role",
        ),
        (json.dumps({"model": "m", "messages": [], "n": 0}).encode(), 400, "messages"),
    ],
)
def test_bad_request_gets_a_clear_openai_error_and_never_reaches_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher, body: bytes, status: int, fragment: str
) -> None:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    validate_error(response.json())
    assert fragment in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert teacher.chat_requests() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("stream", "yes"),
        ("stream", 1),
        ("n", "2"),
        ("n", True),
        ("temperature", "0.5"),
        ("top_p", "1"),
        ("max_tokens", "10"),
        ("max_tokens", 10.5),
        ("max_completion_tokens", "10"),
        ("logprobs", "true"),
        ("top_logprobs", "2"),
        ("seed", "7"),
        ("stream_options", {"include_usage": "true"}),
    ],
)
def test_wrong_type_python_would_coerce_gets_a_400_naming_the_field(
    proxy: RunningProxy, teacher: FakeTeacher, field: str, value: object
) -> None:
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, field: value},
    )
    assert response.status_code == 400
    body = response.json()
    validate_error(body)
    assert body["error"]["type"] == "invalid_request_error"
    param = "stream_options.include_usage" if field == "stream_options" else field
    assert body["error"]["param"] == param
    assert teacher.chat_requests() == []


def test_numbers_of_the_right_kind_reach_the_teacher_as_sent(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    sent = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "temperature": 1,  # an int where a float is expected: JSON has one kind of number
        "top_p": 0.5,
        "max_tokens": 10,
        "n": 2,
        "logprobs": True,
        "stream": False,
    }
    body = json.dumps(sent).encode()
    response = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    [received] = teacher.chat_requests()
    assert received.body == body


def test_body_over_the_limit_gets_413(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", max_body_bytes=4096))
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as caught:
        proxy.client().chat.completions.create(model="gpt-4o-mini", messages=big)
    assert caught.value.status_code == 413
    validate_error(caught.value.response.json())

    def chunked() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    response = httpx.post(proxy.url + "/v1/chat/completions", content=chunked())
    assert response.status_code == 413
    assert teacher.chat_requests() == []


def test_unknown_route_gets_an_openai_404(proxy: RunningProxy) -> None:
    response = httpx.get(proxy.url + "/v2/nothing")
    assert response.status_code == 404
    validate_error(response.json())


def test_bad_task_header_is_refused(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Stillroom-Task": "a b/c"}
        )
    assert caught.value.param == "X-Stillroom-Task"  # type: ignore[attr-defined]
    assert teacher.chat_requests() == []
