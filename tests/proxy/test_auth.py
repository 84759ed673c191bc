"""Both ways users run a gateway: the client's own key, or keys the proxy issues."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import openai
import pytest

from core.settings import Settings

from conftest import RunningProxy
from fakes.teacher import FakeTeacher
from wire_schema import validate_error

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture
def keyed_proxy(
    teacher: FakeTeacher,
    make_settings: Callable[..., Settings],
    start_proxy: Callable[[Settings], RunningProxy],
) -> RunningProxy:
    return start_proxy(
        make_settings(
            teacher_url=teacher.url + "/v1",
            teacher_api_key="sk-server-held",
            api_keys="team-a-key,team-b-key",
        )
    )


def test_client_key_is_passed_to_the_teacher_when_the_server_holds_none(
    proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    proxy.client(api_key="sk-users-own").chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert teacher.chat_requests()[0].headers["authorization"] == "Bearer sk-users-own"


def test_issued_key_is_accepted_and_the_server_key_used(
    keyed_proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    for key in ("team-a-key", "team-b-key"):
        keyed_proxy.client(api_key=key).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert [r.headers["authorization"] for r in teacher.chat_requests()] == [
        "Bearer sk-server-held"
    ] * 2


@pytest.mark.parametrize("key", ["wrong-key", "sk-server-held"])
def test_wrong_key_gets_401_and_nothing_reaches_the_teacher(
    keyed_proxy: RunningProxy, teacher: FakeTeacher, key: str
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        keyed_proxy.client(api_key=key).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    validate_error(caught.value.response.json())
    assert caught.value.code == "invalid_api_key"
    assert teacher.requests == []


def test_missing_key_gets_401(keyed_proxy: RunningProxy, teacher: FakeTeacher) -> None:
    response = httpx.post(
        keyed_proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
    )
    assert response.status_code == 401
    validate_error(response.json())
    assert teacher.requests == []


def test_pass_through_paths_need_an_issued_key_too(
    keyed_proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    with pytest.raises(openai.AuthenticationError):
        keyed_proxy.client(api_key="wrong").models.list()
    models = keyed_proxy.client(api_key="team-a-key").models.list()
    assert [m.id for m in models] == ["gpt-4o-mini", "text-embedding-3-small"]
    assert teacher.requests[0].headers["authorization"] == "Bearer sk-server-held"


def test_azure_style_api_key_header_is_accepted(
    keyed_proxy: RunningProxy, teacher: FakeTeacher
) -> None:
    response = httpx.post(
        keyed_proxy.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"api-key": "team-b-key"},
    )
    assert response.status_code == 200
    assert "api-key" not in teacher.chat_requests()[0].headers
