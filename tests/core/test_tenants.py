"""Tenants: task keys, the tenant of an unnamed key, and named tenants as settings
(``STILLROOM_TENANTS``, ``STILLROOM_TENANTS_FILE``): parsed, checked, and kept as hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from core.errors import ConfigurationError
from core.settings import Settings, load_settings
from core.tasks import identify_task
from core.tenants import key_hash, split_task_key, task_key, unnamed_tenant
from core.wire import ChatCompletionRequest

HEX = hashlib.sha256(b"sk-globex").hexdigest()


def test_the_default_tenants_task_key_is_its_name() -> None:
    assert task_key("ticket-triage") == "ticket-triage"
    assert split_task_key("ticket-triage") == ("ticket-triage", "default")


def test_another_tenants_task_key_names_the_tenant() -> None:
    assert task_key("ticket-triage", "acme") == "ticket-triage@acme"
    assert split_task_key("ticket-triage@acme") == ("ticket-triage", "acme")


def test_one_task_name_of_two_tenants_is_two_tasks() -> None:
    chat = ChatCompletionRequest.model_validate(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    )
    acme = identify_task("ticket-triage", chat, tenant="acme")
    globex = identify_task("ticket-triage", chat, tenant="globex")
    assert (acme.name, acme.tenant) == ("ticket-triage@acme", "acme")
    assert globex.name == "ticket-triage@globex"
    assert identify_task(None, chat, tenant="acme").name.endswith("@acme")


def test_an_unnamed_keys_tenant_is_key_and_twelve_digits_of_its_hash() -> None:
    assert unnamed_tenant(key_hash("sk-client")) == "key-" + key_hash("sk-client")[:12]


def test_named_tenants_are_read_from_the_environment_as_key_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STILLROOM_TENANTS", f"acme=sk-a1, sk-a2 ;globex=sha256:{HEX.upper()}")
    settings = load_settings()
    assert settings.key_tenants == {
        key_hash("sk-a1"): "acme",
        key_hash("sk-a2"): "acme",
        HEX: "globex",
    }


def test_no_named_key_is_held_by_the_settings() -> None:
    settings = Settings(tenants="acme=sk-secret-a1")
    assert "sk-secret-a1" not in settings.model_dump_json()
    assert "sk-secret-a1" not in repr(settings)


def test_named_tenants_are_read_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(f'acme = ["sk-a1", "sk-a2"]\nglobex = "sha256:{HEX}"\n')
    settings = Settings(tenants_file=path)
    assert settings.key_tenants == {
        key_hash("sk-a1"): "acme",
        key_hash("sk-a2"): "acme",
        HEX: "globex",
    }


def test_named_tenants_are_read_from_a_json_file_along_with_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "tenants.json"
    path.write_text(json.dumps({"globex": [f"sha256:{HEX}"]}))
    settings = Settings(tenants="acme=sk-a1", tenants_file=path)
    assert settings.key_tenants == {key_hash("sk-a1"): "acme", HEX: "globex"}


def test_tenancy_is_by_key_unless_set_to_single() -> None:
    assert Settings().tenancy == "key"
    assert Settings(tenancy="single").tenancy == "single"


@pytest.mark.parametrize(
    "name", ["Acme", "acme corp", "-acme", "a" * 33, "acme@eu", "key-0123456789ab"]
)
def test_an_invalid_tenant_name_is_a_configuration_error(name: str) -> None:
    with pytest.raises(ConfigurationError, match="tenant name"):
        Settings(tenants=f"{name}=sk-a1")


def test_a_hash_that_is_not_sha256_hex_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="64 hex digits"):
        Settings(tenants="acme=sha256:abc")


def test_a_tenant_without_keys_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs one key or more"):
        Settings(tenants="acme=")


def test_a_key_given_without_its_tenant_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError, match="has no '='") as raised:
        Settings(tenants="acme=sk-a1;sk-secret-b")
    assert "sk-secret-b" not in str(raised.value)


def test_one_key_named_for_two_tenants_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('globex = ["sk-a1"]\n')
    with pytest.raises(ConfigurationError, match="two tenants, 'acme' and 'globex'") as raised:
        Settings(tenants="acme=sk-a1", tenants_file=path)
    assert "sk-a1" not in str(raised.value)


def test_a_missing_tenants_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read it"):
        Settings(tenants_file=tmp_path / "absent.toml")


def test_a_tenants_file_that_is_not_toml_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text("acme = [sk-a1\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        Settings(tenants_file=path)
