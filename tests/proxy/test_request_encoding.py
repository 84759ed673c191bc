"""Compressed chat completion requests: decoded before parsing, the size limit kept on
what they decode to, and the teacher sent the decoded JSON."""

from __future__ import annotations

import gzip
import importlib.util
import json
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Message

from core.errors import PayloadTooLargeError
from core.settings import Settings
from proxy.gateway.body import read_body

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import stored_exchanges
from wire_schema import validate_chat_completion, validate_error

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Where is my order?"}]}
BODY = json.dumps(CHAT).encode()


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def post(proxy: RunningProxy, content: bytes, encoding: str) -> httpx.Response:
    return httpx.post(
        proxy.url + "/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json", "content-encoding": encoding},
    )


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("deflate", zlib.compress, id="deflate"),
        # Without the zlib header, as some clients send it.
        pytest.param("deflate", raw_deflate, id="raw-deflate"),
        pytest.param(
            "gzip, deflate", lambda body: zlib.compress(gzip.compress(body)), id="gzip-then-deflate"
        ),
    ],
)
def test_compressed_body_is_decoded_and_the_teacher_gets_the_json(
    proxy: RunningProxy,
    teacher: FakeTeacher,
    encoding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    response = post(proxy, encode(BODY), encoding)

    assert response.status_code == 200
    validate_chat_completion(response.json())
    [received] = teacher.chat_requests()
    assert received.body == BODY
    assert "content-encoding" not in received.headers
    [exchange] = stored_exchanges(proxy.engine, 1)
    assert exchange.request == CHAT


def test_streamed_answer_to_a_gzip_request_arrives(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    body = gzip.compress(json.dumps({**CHAT, "stream": True}).encode())
    response = post(proxy, body, "gzip")

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")


def test_body_that_decodes_past_the_limit_gets_413_and_never_reaches_the_teacher(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> None:
    proxy = start_proxy(make_settings(teacher_url=teacher.url + "/v1", max_body_bytes=64 * 1024))
    bomb = gzip.compress(b" " * (32 << 20))
    assert len(bomb) < 64 * 1024, "small on the wire, 32 MiB decoded"

    response = post(proxy, bomb, "gzip")

    assert response.status_code == 413
    validate_error(response.json())
    assert teacher.chat_requests() == []


async def test_a_compression_bomb_is_refused_without_being_decoded_whole() -> None:
    deflater = zlib.compressobj(9, wbits=16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    bomb = b"".join(deflater.compress(zeros) for _ in range(512)) + deflater.flush()
    request = _request(bomb, encoding=b"gzip")

    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLargeError):
            await read_body(request, limit=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 8 << 20, f"{peak} bytes held for a body that decodes to 512 MiB"


@pytest.mark.parametrize("encoding", ["compress", "x-unknown", "gzip, compress"])
def test_encoding_the_proxy_cannot_decode_gets_415_and_never_reaches_the_teacher(
    proxy: RunningProxy, teacher: FakeTeacher, encoding: str
) -> None:
    response = post(proxy, BODY, encoding)

    assert response.status_code == 415
    body = response.json()
    validate_error(body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "unsupported_content_encoding"
    assert "gzip" in response.headers["accept-encoding"]
    assert teacher.chat_requests() == []


OPTIONAL_DECODERS = {"br": "brotli", "zstd": "zstandard"}


@pytest.mark.parametrize("encoding", list(OPTIONAL_DECODERS))
def test_br_and_zstd_get_415_where_their_decoder_is_not_installed(
    proxy: RunningProxy, teacher: FakeTeacher, encoding: str
) -> None:
    if importlib.util.find_spec(OPTIONAL_DECODERS[encoding]) is not None:
        pytest.skip(f"{OPTIONAL_DECODERS[encoding]} is installed")

    response = post(proxy, b"\x00compressed", encoding)

    assert response.status_code == 415
    assert encoding not in response.headers["accept-encoding"]
    assert teacher.chat_requests() == []


@pytest.mark.parametrize("encoding", list(OPTIONAL_DECODERS))
def test_br_and_zstd_are_decoded_where_their_decoder_is_installed(
    proxy: RunningProxy, teacher: FakeTeacher, encoding: str
) -> None:
    module: Any = pytest.importorskip(OPTIONAL_DECODERS[encoding])
    encoded = module.compress(BODY) if encoding == "br" else module.ZstdCompressor().compress(BODY)

    response = post(proxy, encoded, encoding)

    assert response.status_code == 200
    assert teacher.chat_requests()[0].body == BODY


@pytest.mark.parametrize(
    ("encoding", "content"),
    [
        pytest.param("gzip", b"not gzip at all", id="gzip-garbage"),
        pytest.param("gzip", gzip.compress(BODY)[:-12], id="gzip-cut-short"),
        pytest.param("deflate", b"\xff", id="deflate-garbage"),
    ],
)
def test_body_that_is_not_in_its_encoding_gets_400(
    proxy: RunningProxy, teacher: FakeTeacher, encoding: str, content: bytes
) -> None:
    response = post(proxy, content, encoding)

    assert response.status_code == 400
    body = response.json()
    validate_error(body)
    assert f"not valid {encoding} data" in body["error"]["message"]
    assert teacher.chat_requests() == []


def _request(body: bytes, *, encoding: bytes) -> Request:
    """A request whose body arrives in 64 KiB pieces, as a server hands it on."""
    pieces = [body[start : start + 65536] for start in range(0, len(body), 65536)]

    async def receive() -> Message:
        piece = pieces.pop(0) if pieces else b""
        return {"type": "http.request", "body": piece, "more_body": bool(pieces)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-encoding", encoding)],
    }
    return Request(scope, receive)
