"""Every other /v1 path reaches the teacher and comes back byte for byte."""

from __future__ import annotations

import gzip
import hashlib
import json

import httpx
import openai
from sqlmodel import Session

from core.store import count_exchanges

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from servers import wait_until
from wire_schema import validate_embeddings, validate_models_list


def test_models_list_passes_through(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    response = httpx.get(proxy.url + "/v1/models", headers={"authorization": "Bearer k"})
    validate_models_list(response.json())
    with openai.OpenAI(base_url=teacher.url + "/v1", api_key="k") as direct:
        assert proxy.client().models.list().model_dump() == direct.models.list().model_dump()


def test_embeddings_pass_through(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    result = proxy.client().embeddings.create(
        model="text-embedding-3-small", input=["refund please", "where is it"]
    )
    assert [d.index for d in result.data] == [0, 1]
    response = httpx.post(
        proxy.url + "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "x"},
    )
    validate_embeddings(response.json())


def test_request_reaches_the_teacher_unchanged(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    body = bytes(range(256)) * 40
    response = httpx.put(
        proxy.url + "/v1/files/file-123/content?purpose=fine-tune&x=%2F",
        content=body,
        headers={
            "content-type": "application/octet-stream",
            "openai-organization": "org-1",
            "x-custom": "kept",
            "x-stillroom-task": "not-forwarded",
            "connection": "keep-alive, x-hop",
            "x-hop": "dropped",
        },
    )
    assert response.status_code == 200
    echoed = response.json()
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/v1/files/file-123/content"
    assert echoed["query"] == "purpose=fine-tune&x=%2F"
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert echoed["headers"]["openai-organization"] == "org-1"
    assert echoed["headers"]["x-custom"] == "kept"
    assert "x-stillroom-task" not in echoed["headers"]
    assert "x-hop" not in echoed["headers"]
    assert response.headers["x-echo"] == "1"
    assert response.headers.get_list("set-cookie") == ["a=1"]


def test_compressed_answer_keeps_its_encoding_and_length(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    with httpx.stream(
        "GET", proxy.url + "/v1/echo?gzip=1", headers={"accept-encoding": "gzip"}
    ) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(raw)
    assert json.loads(gzip.decompress(raw))["path"] == "/v1/echo"
    assert teacher.requests[-1].headers["accept-encoding"] == "gzip"


def test_get_without_body_sends_no_body(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    httpx.get(proxy.url + "/v1/files")
    received = teacher.requests[-1]
    assert received.body == b""
    assert "transfer-encoding" not in received.headers


def test_teacher_status_passes_through(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    response = httpx.delete(proxy.url + "/v1/files/file-404?status=404")
    assert response.status_code == 404


def test_pass_through_is_not_captured(proxy: RunningProxy, teacher: FakeTeacher) -> None:
    proxy.client().models.list()
    proxy.client().embeddings.create(model="text-embedding-3-small", input="x")
    proxy.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )

    def one_stored() -> bool:
        with Session(proxy.engine) as session:
            return count_exchanges(session=session) == 1

    wait_until(one_stored)
