"""Header hygiene between client, proxy and teacher (RFC 9110 section 7.6.1)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from proxy.gateway.headers import RawHeaders, client_response_headers, teacher_request_headers

from conftest import RunningProxy
from fakes.teacher import FakeTeacher, Fault

CLIENT_END_TO_END: RawHeaders = [
    (b"Content-Type", b"application/json"),
    (b"User-Agent", b"OpenAI/Python 1.50.0"),
    (b"OpenAI-Organization", b"org-123"),
    (b"X-Stainless-Retry-Count", b"0"),
]
HOP_BY_HOP: RawHeaders = [
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Authorization", b"Basic cHJveHk6c2VjcmV0"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Trailer", b"Expires"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"h2c"),
]


def names(headers: RawHeaders) -> list[bytes]:
    return [name for name, _ in headers]


def values_of(headers: RawHeaders, name: bytes) -> list[bytes]:
    return [value for header, value in headers if header == name]


# Client to teacher.


def test_end_to_end_headers_go_upstream_in_order_with_lowercase_names() -> None:
    headers = teacher_request_headers(CLIENT_END_TO_END, teacher_key=None)

    assert headers == [(name.lower(), value) for name, value in CLIENT_END_TO_END]


def test_hop_by_hop_headers_do_not_go_upstream() -> None:
    headers = teacher_request_headers([*HOP_BY_HOP, *CLIENT_END_TO_END], teacher_key=None)

    assert names(headers) == [name.lower() for name, _ in CLIENT_END_TO_END]


def test_headers_named_in_connection_do_not_go_upstream() -> None:
    client: RawHeaders = [
        (b"Connection", b"close, X-Trace-Hop"),
        (b"X-Trace-Hop", b"1"),
        (b"X-Trace-Id", b"abc"),
    ]

    headers = teacher_request_headers(client, teacher_key=None)

    assert headers == [(b"x-trace-id", b"abc")]


@pytest.mark.parametrize(
    "header",
    [
        (b"Host", b"127.0.0.1:8000"),
        (b"Content-Length", b"128"),
        (b"X-Stillroom-Task", b"tickets"),
        (b"x-stillroom-anything", b"1"),
    ],
)
def test_host_content_length_and_stillroom_headers_do_not_go_upstream(
    header: tuple[bytes, bytes],
) -> None:
    headers = teacher_request_headers([header, *CLIENT_END_TO_END], teacher_key=None)

    assert names(headers) == [name.lower() for name, _ in CLIENT_END_TO_END]


def test_client_key_goes_upstream_when_the_server_holds_none() -> None:
    client: RawHeaders = [(b"Authorization", b"Bearer sk-client"), (b"api-key", b"azure-key")]

    headers = teacher_request_headers(client, teacher_key=None)

    assert headers == [(b"authorization", b"Bearer sk-client"), (b"api-key", b"azure-key")]


def test_server_teacher_key_replaces_the_client_authorization() -> None:
    client: RawHeaders = [(b"Authorization", b"Bearer sk-client"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key="sk-server")

    assert values_of(headers, b"authorization") == [b"Bearer sk-server"]


def test_server_teacher_key_drops_the_client_api_key_header() -> None:
    client: RawHeaders = [(b"Api-Key", b"azure-key"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key="sk-server")

    assert values_of(headers, b"api-key") == []
    assert values_of(headers, b"authorization") == [b"Bearer sk-server"]


def test_server_teacher_key_is_sent_even_when_the_client_sent_none() -> None:
    headers = teacher_request_headers(CLIENT_END_TO_END, teacher_key="sk-server")

    assert headers[-1] == (b"authorization", b"Bearer sk-server")
    assert headers[:-1] == [(name.lower(), value) for name, value in CLIENT_END_TO_END]


def test_client_accept_encoding_is_left_to_the_http_client() -> None:
    client: RawHeaders = [(b"Accept-Encoding", b"br"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key=None)

    assert values_of(headers, b"accept-encoding") == []


def test_accept_encoding_override_is_sent_upstream() -> None:
    client: RawHeaders = [(b"Accept-Encoding", b"br"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key=None, accept_encoding=b"identity")

    assert values_of(headers, b"accept-encoding") == [b"identity"]


def test_content_encoding_goes_upstream_with_the_body_it_describes() -> None:
    client: RawHeaders = [(b"Content-Encoding", b"gzip"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key=None)

    assert values_of(headers, b"content-encoding") == [b"gzip"]


def test_content_encoding_of_a_decoded_body_does_not_go_upstream() -> None:
    client: RawHeaders = [(b"Content-Encoding", b"gzip"), *CLIENT_END_TO_END]

    headers = teacher_request_headers(client, teacher_key=None, decoded=True)

    assert names(headers) == [name.lower() for name, _ in CLIENT_END_TO_END]


# Teacher to client.


def test_rate_limit_and_retry_headers_reach_the_client() -> None:
    teacher: RawHeaders = [
        (b"Retry-After", b"20"),
        (b"x-ratelimit-limit-requests", b"500"),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-tokens", b"6m0s"),
        (b"x-request-id", b"req_123"),
        (b"openai-processing-ms", b"231"),
    ]

    headers = client_response_headers(teacher, decoded=True)

    assert headers == [(name.lower(), value) for name, value in teacher]


def test_repeated_set_cookie_headers_all_reach_the_client() -> None:
    teacher: RawHeaders = [
        (b"set-cookie", b"__cf_bm=one; path=/; HttpOnly"),
        (b"set-cookie", b"_cfuvid=two; path=/; HttpOnly"),
    ]

    headers = client_response_headers(teacher, decoded=False)

    assert values_of(headers, b"set-cookie") == [
        b"__cf_bm=one; path=/; HttpOnly",
        b"_cfuvid=two; path=/; HttpOnly",
    ]


def test_hop_by_hop_headers_do_not_reach_the_client() -> None:
    teacher: RawHeaders = [*HOP_BY_HOP, (b"content-type", b"application/json")]

    headers = client_response_headers(teacher, decoded=False)

    assert headers == [(b"content-type", b"application/json")]


def test_headers_named_in_connection_do_not_reach_the_client() -> None:
    teacher: RawHeaders = [
        (b"Connection", b"X-Upstream-Hop"),
        (b"X-Upstream-Hop", b"edge-1"),
        (b"content-type", b"text/event-stream"),
    ]

    headers = client_response_headers(teacher, decoded=False)

    assert headers == [(b"content-type", b"text/event-stream")]


def test_decoded_body_drops_content_encoding_and_length() -> None:
    teacher: RawHeaders = [
        (b"Content-Encoding", b"gzip"),
        (b"Content-Length", b"312"),
        (b"Content-Type", b"application/json"),
    ]

    headers = client_response_headers(teacher, decoded=True)

    assert headers == [(b"content-type", b"application/json")]


def test_body_passed_as_is_keeps_content_encoding_and_length() -> None:
    teacher: RawHeaders = [
        (b"Content-Encoding", b"gzip"),
        (b"Content-Length", b"312"),
        (b"Content-Type", b"application/json"),
    ]

    headers = client_response_headers(teacher, decoded=False)

    assert headers == [(name.lower(), value) for name, value in teacher]


@pytest.mark.parametrize("decoded", [False, True])
def test_teacher_date_and_server_are_left_to_the_proxys_own_server(decoded: bool) -> None:
    teacher: RawHeaders = [
        (b"Date", b"Tue, 01 Dec 2026 16:40:15 GMT"),
        (b"Server", b"cloudflare"),
        (b"content-type", b"application/json"),
    ]

    headers = client_response_headers(teacher, decoded=decoded)

    assert headers == [(b"content-type", b"application/json")]


# End to end: what a client gets from the proxy running under uvicorn.

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Where is my order?"}]}
# name: (teacher fault, method, path, JSON body, status the client gets)
ANSWERS: dict[str, tuple[Fault | None, str, str, dict[str, Any] | None, int]] = {
    "plain": (None, "POST", "/v1/chat/completions", CHAT, 200),
    "streamed": (None, "POST", "/v1/chat/completions", {**CHAT, "stream": True}, 200),
    "teacher error": (Fault(status=429), "POST", "/v1/chat/completions", CHAT, 429),
    "proxy error": (None, "POST", "/v1/chat/completions", {"model": "m"}, 400),
    "pass-through": (None, "GET", "/v1/models", None, 200),
    "pass-through error": (None, "DELETE", "/v1/files/file-1?status=404", None, 404),
}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_every_answer_has_one_date_and_at_most_one_server_header(
    proxy: RunningProxy, teacher: FakeTeacher, answer: str
) -> None:
    fault, method, path, body, status = ANSWERS[answer]
    if fault is not None:
        teacher.faults.append(fault)
    with httpx.stream(method, proxy.url + path, json=body) as response:
        response.read()
    assert response.status_code == status
    assert response.headers.get_list("date") == [response.headers["date"]]
    assert len(response.headers.get_list("server")) <= 1
