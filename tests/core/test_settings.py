"""Settings: defaults from DESIGN.md, STILLROOM_* variables, a TOML file, and prices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import DEFAULT_PRICES, ModelPrice, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No STILLROOM_* variable of the machine running the tests leaks into them."""
    for name in list(os.environ):
        if name.upper().startswith("STILLROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stillroom.toml"
    path.write_text(text, encoding="utf-8")
    return path


# Defaults: the table in DESIGN.md "Configuration".


def test_default_teacher_is_openai() -> None:
    assert load_settings().teacher_url == "https://api.openai.com/v1"


def test_default_store_is_the_sqlite_file_stillroom_db() -> None:
    assert load_settings().database_url == "sqlite:///./stillroom.db"


def test_default_data_dir_is_stillroom_data() -> None:
    assert load_settings().data_dir == Path("./stillroom-data")


def test_default_student_backend_is_embedded() -> None:
    assert load_settings().student_backend == "embedded"


def test_keys_tokens_student_url_and_base_model_are_unset_by_default() -> None:
    settings = load_settings()
    assert settings.teacher_api_key is None
    assert settings.api_keys == []
    assert settings.admin_token is None
    assert settings.student_url is None
    assert settings.base_model is None


# Environment.


def test_stillroom_env_vars_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "http://teacher.internal:9000/v1")
    monkeypatch.setenv("STILLROOM_TEACHER_API_KEY", "sk-server")
    monkeypatch.setenv("STILLROOM_ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("STILLROOM_DATABASE_URL", "postgresql://db/stillroom")
    monkeypatch.setenv("STILLROOM_DATA_DIR", "/var/lib/stillroom")
    monkeypatch.setenv("STILLROOM_STUDENT_BACKEND", "vllm")
    monkeypatch.setenv("STILLROOM_STUDENT_URL", "http://vllm:8001/v1")
    monkeypatch.setenv("STILLROOM_BASE_MODEL", "Qwen/Qwen2.5-0.5B-Instruct")

    settings = load_settings()

    assert settings.teacher_url == "http://teacher.internal:9000/v1"
    assert settings.teacher_api_key is not None
    assert settings.teacher_api_key.get_secret_value() == "sk-server"
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "admin-secret"
    assert settings.database_url == "postgresql://db/stillroom"
    assert settings.data_dir == Path("/var/lib/stillroom")
    assert settings.student_backend == "vllm"
    assert settings.student_url == "http://vllm:8001/v1"
    assert settings.base_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_api_keys_are_split_on_commas_and_blanks_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STILLROOM_API_KEYS", "a, b,,c")

    keys = [key.get_secret_value() for key in load_settings().api_keys]

    assert keys == ["a", "b", "c"]


def test_student_urls_name_several_replicas_and_take_precedence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STILLROOM_STUDENT_URL", "http://vllm:8000")
    monkeypatch.setenv(
        "STILLROOM_STUDENT_URLS", "http://vllm-0.vllm:8000/, ,http://vllm-1.vllm:8000"
    )

    settings = load_settings()

    assert settings.student_urls == ["http://vllm-0.vllm:8000", "http://vllm-1.vllm:8000"]
    assert settings.student_replica_urls == settings.student_urls


def test_one_student_url_alone_is_one_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().student_replica_urls == [], "none: the caller's default"
    monkeypatch.setenv("STILLROOM_STUDENT_URL", "http://vllm:8000/")

    assert load_settings().student_replica_urls == ["http://vllm:8000"]


def test_student_urls_from_another_process_are_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_STUDENT_URLS", '["http://a:8000", "http://b:8000"]')

    assert load_settings().student_urls == ["http://a:8000", "http://b:8000"]


def test_a_student_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be an http"):
        Settings(student_urls=["http://a:8000", "vllm-1:8000"])


def test_trailing_slash_of_teacher_url_is_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "https://api.example.com/v1/")

    assert load_settings().teacher_url == "https://api.example.com/v1"


# The TOML file.


def test_config_file_is_read_by_path(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        'teacher_url = "http://from-file:1/v1"\nstudent_backend = "vllm"\nport = 9000\n',
    )

    settings = load_settings(path)

    assert settings.teacher_url == "http://from-file:1/v1"
    assert settings.student_backend == "vllm"
    assert settings.port == 9000


def test_config_file_is_read_from_stillroom_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, 'teacher_url = "http://from-file:1/v1"\n')
    monkeypatch.setenv("STILLROOM_CONFIG", str(path))

    assert load_settings().teacher_url == "http://from-file:1/v1"


def test_env_overrides_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, 'teacher_url = "http://from-file:1/v1"\nport = 9000\n')
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "http://from-env:2/v1")

    settings = load_settings(path)

    assert settings.teacher_url == "http://from-env:2/v1"
    assert settings.port == 9000


def test_explicit_overrides_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, 'teacher_url = "http://from-file:1/v1"\n')
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "http://from-env:2/v1")

    settings = load_settings(path, teacher_url="http://from-flag:3/v1")

    assert settings.teacher_url == "http://from-flag:3/v1"


def test_none_overrides_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, "port = 9000\n")
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "http://from-env:2/v1")

    settings = load_settings(path, teacher_url=None, port=None, host=None)

    assert settings.teacher_url == "http://from-env:2/v1"
    assert settings.port == 9000
    assert settings.host == "127.0.0.1"


def test_missing_config_file_raises_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_missing_config_file_named_by_stillroom_config_raises_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STILLROOM_CONFIG", str(tmp_path / "absent.toml"))

    with pytest.raises(ConfigurationError, match="not found"):
        load_settings()


# Refusals.


@pytest.mark.parametrize("url", ["api.openai.com/v1", "ftp://teacher/v1", ""])
def test_teacher_url_without_http_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="teacher_url"):
        load_settings(teacher_url=url)


def test_invalid_teacher_url_in_env_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_TEACHER_URL", "localhost:8080/v1")

    with pytest.raises(ValidationError, match="teacher_url"):
        load_settings()


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValidationError, match="teacher_ulr"):
        load_settings(teacher_ulr="https://typo.example/v1")


def test_unknown_setting_in_config_file_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'teacher_ulr = "https://typo.example/v1"\n')

    with pytest.raises(ValidationError, match="teacher_ulr"):
        load_settings(path)


def test_unknown_student_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_STUDENT_BACKEND", "tgi")

    with pytest.raises(ValidationError, match="student_backend"):
        load_settings()


# Prices.


def test_price_of_exact_model() -> None:
    assert Settings().price_of("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


def test_price_of_dated_model_is_its_longest_prefix() -> None:
    assert Settings().price_of("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert DEFAULT_PRICES["gpt-4o-mini"] != DEFAULT_PRICES["gpt-4o"]


def test_price_of_unknown_model_is_none() -> None:
    assert Settings().price_of("mistral-large-latest") is None


def test_price_of_no_model_is_none() -> None:
    assert Settings().price_of(None) is None
    assert Settings().price_of("") is None


def test_cost_is_usd_per_million_tokens() -> None:
    price = ModelPrice(input=0.15, output=0.60, cached_input=0.075)

    assert price.cost(1_000, 500) == pytest.approx((1_000 * 0.15 + 500 * 0.60) / 1e6)


def test_cost_charges_cached_tokens_at_the_cached_rate() -> None:
    price = ModelPrice(input=0.15, output=0.60, cached_input=0.075)

    cost = price.cost(1_000, 500, cached_tokens=400)

    assert cost == pytest.approx((600 * 0.15 + 400 * 0.075 + 500 * 0.60) / 1e6)


def test_cost_charges_cached_tokens_at_the_input_rate_without_a_cached_price() -> None:
    price = ModelPrice(input=0.15, output=0.60)

    assert price.cost(1_000, 500, cached_tokens=400) == price.cost(1_000, 500)


def test_cost_counts_no_more_cached_tokens_than_prompt_tokens() -> None:
    price = ModelPrice(input=1.0, output=2.0, cached_input=0.5)

    assert price.cost(100, 0, cached_tokens=1_000) == pytest.approx(100 * 0.5 / 1e6)


def test_negative_price_is_refused() -> None:
    with pytest.raises(ValidationError):
        ModelPrice(input=-1.0, output=1.0)


def test_prices_are_read_as_json_from_stillroom_prices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prices = {"acme-large": {"input": 3.0, "output": 15.0, "cached_input": 0.3}}
    monkeypatch.setenv("STILLROOM_PRICES", json.dumps(prices))

    price = load_settings().price_of("acme-large-2025-01-01")

    assert price == ModelPrice(input=3.0, output=15.0, cached_input=0.3)


def test_prices_from_env_extend_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILLROOM_PRICES", json.dumps({"acme-large": {"input": 3, "output": 15}}))

    assert load_settings().price_of("gpt-4o") == DEFAULT_PRICES["gpt-4o"]


def test_prices_are_read_from_a_table_in_the_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[prices."acme-large"]\ninput = 3.0\noutput = 15.0\n')

    assert load_settings(path).price_of("acme-large") == ModelPrice(input=3.0, output=15.0)
