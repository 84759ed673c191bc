"""Settings handed to a child process (a worker, the distiller) rebuild the same settings
there: secrets included, never their masks."""

from __future__ import annotations

import pytest

from core.settings import Settings
from proxy.processes.environment import settings_environment


def test_every_secret_reaches_a_child_process_as_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(
        teacher_api_key="sk-teacher",
        anthropic_api_key="sk-ant-teacher",
        admin_token="admin-secret",
        api_keys=["sk-one", "sk-two"],
    )
    for name, value in settings_environment(settings).items():
        monkeypatch.setenv(name, value)

    child = Settings()

    assert child.teacher_api_key is not None
    assert child.teacher_api_key.get_secret_value() == "sk-teacher"
    assert child.anthropic_api_key is not None
    assert child.anthropic_api_key.get_secret_value() == "sk-ant-teacher"
    assert child.admin_token is not None
    assert child.admin_token.get_secret_value() == "admin-secret"
    assert [key.get_secret_value() for key in child.api_keys] == ["sk-one", "sk-two"]
