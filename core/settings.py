"""The one settings class: ``STILLROOM_*`` environment variables over an optional TOML file.

Precedence, highest first: values passed in code (the CLI's flags), environment, the TOML
file (``--config FILE`` or ``STILLROOM_CONFIG``), the defaults below.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from core.errors import ConfigurationError
from core.tenants import parse_tenant_keys, read_tenants_file, tenants_by_key_hash


class ModelPrice(BaseModel):
    """What one model costs, in USD per million tokens."""

    input: float = Field(ge=0, description="USD per million input (prompt) tokens")
    output: float = Field(ge=0, description="USD per million output (completion) tokens")
    cached_input: float | None = Field(
        default=None, ge=0, description="USD per million cached prompt tokens, if cheaper"
    )

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one exchange with these token counts."""
        cached = min(cached_tokens, prompt_tokens) if self.cached_input is not None else 0
        cached_rate = self.cached_input if self.cached_input is not None else self.input
        return (
            (prompt_tokens - cached) * self.input
            + cached * cached_rate
            + completion_tokens * self.output
        ) / 1_000_000


# List prices of the OpenAI and Anthropic models teams most often distil from (USD per
# million tokens). Override or extend with STILLROOM_PRICES or a [prices] table in the
# config file.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40, cached_input=0.025),
    "gpt-5": ModelPrice(input=1.25, output=10.00, cached_input=0.125),
    "gpt-5-mini": ModelPrice(input=0.25, output=2.00, cached_input=0.025),
    "gpt-5-nano": ModelPrice(input=0.05, output=0.40, cached_input=0.005),
    # Anthropic's, for /v1/messages; a cache read costs a tenth of an input token.
    "claude-opus-4": ModelPrice(input=15.00, output=75.00, cached_input=1.50),
    "claude-opus-4-5": ModelPrice(input=5.00, output=25.00, cached_input=0.50),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00, cached_input=0.30),
    "claude-3-7-sonnet": ModelPrice(input=3.00, output=15.00, cached_input=0.30),
    "claude-haiku-4-5": ModelPrice(input=1.00, output=5.00, cached_input=0.10),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00, cached_input=0.08),
    "claude-3-haiku": ModelPrice(input=0.25, output=1.25, cached_input=0.03),
}


StudentKind = Literal["lora", "classifier", "extractor"]
# What instructor, pydantic-ai and people say when they send an answer back as wrong.
REASK_PHRASES = (
    "validation error",
    "fix the error",
    "recall the function",
    "correct your",
    "try again",
    "not valid",
    "invalid",
    "incorrect",
    "wrong",
    "does not match",
    "doesn't match",
    "failed to parse",
)
STUDENT_KINDS: tuple[StudentKind, ...] = ("lora", "classifier", "extractor")


class Settings(BaseSettings):
    """Everything stillroom can be told. Each field is also ``STILLROOM_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="STILLROOM_", extra="forbid", validate_default=True
    )

    teacher_url: str = Field(
        default="https://api.openai.com/v1",
        description="Teacher base URL, ending in /v1 (OpenAI or any compatible API).",
    )
    teacher_api_key: SecretStr | None = Field(
        default=None,
        description="Teacher key held by the server. Unset: each client's own key is passed on.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys clients must present when the server holds the "
        "teacher key.",
    )
    anthropic_url: str = Field(
        default="https://api.anthropic.com",
        description="Base URL of the teacher for /v1/messages (Anthropic's Messages API).",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        description="Anthropic key held by the server. Unset: each client's own key "
        "(x-api-key) is passed on.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for /admin/*. Unset: admin answers only on a loopback bind.",
    )
    tenancy: Literal["key", "single"] = Field(
        default="key",
        description="Whose traffic is whose: key (each client key, or the tenant named for "
        "it, has its own tasks, students and cache; requests without a key are the default "
        "tenant's) or single (one team: everyone is the default tenant).",
    )
    tenants: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        description="Named tenants and their keys, e.g. acme=sk-a1,sk-a2;globex=sha256:HEX (a "
        "key as itself, or sha256: and the hex of its SHA-256); only the hashes are kept.",
    )
    tenants_file: Path | None = Field(
        default=None,
        description="A TOML or JSON file of named tenants (tenant = [keys]), read at start, "
        "in addition to STILLROOM_TENANTS.",
    )
    database_url: str = Field(
        default="sqlite:///./stillroom.db",
        description="SQLAlchemy URL of the store: a SQLite file (WAL) or postgresql://...",
    )
    data_dir: Path = Field(
        default=Path("./stillroom-data"),
        description="Adapters, converted base models and capture spill files.",
    )
    student_backend: Literal["embedded", "vllm"] = Field(
        default="embedded", description="Student server kind: embedded or vllm."
    )
    student_url: str | None = Field(
        default=None,
        description="Student server base URL (vLLM or `stillroom student`); "
        "embedded in `serve` when unset.",
    )
    student_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Base URLs of several student server replicas (comma-separated), each "
        "loaded with every published adapter; when set, used instead of STILLROOM_STUDENT_URL.",
    )
    student_refresh_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often each proxy asks every student replica which adapters it "
        "holds (GET /v1/models).",
    )
    base_model: str | None = Field(
        default=None,
        description="Student base model: Hugging Face id or local path. "
        "Unset: the bundled SmolLM2-135M-Instruct.",
    )
    host: str = Field(default="127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the proxy listens on.")
    teacher_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to open a connection to the teacher."
    )
    teacher_read_timeout: float = Field(
        default=600.0,
        gt=0,
        description="Seconds the teacher may stay silent (between stream chunks, or "
        "before a whole answer).",
    )
    teacher_max_connections: int = Field(
        default=1000, ge=1, description="Pooled connections to the teacher, at most."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest chat completion request body accepted (413 above).",
    )
    import_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest JSONL file POST /admin/tasks/{task}/import (`stillroom import`) "
        "accepts (413 above).",
    )
    capture: bool = Field(default=True, description="Store every exchange.")
    capture_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Exchanges held in memory for the store; beyond it they spill to disk.",
    )
    capture_batch_size: int = Field(
        default=256, ge=1, description="Exchanges written to the store in one transaction."
    )
    capture_flush_seconds: float = Field(
        default=0.25, gt=0, description="Longest wait before a partial batch is written."
    )
    capture_retry_seconds: float = Field(
        default=2.0, gt=0, description="Wait between tries while the store is unreachable."
    )
    retry_window_seconds: float = Field(
        default=10.0,
        ge=0,
        description="A client that sends the same request of a task again within this many "
        "seconds of its answer makes that answer suspect (left out of training); 0: off.",
    )
    reask_window_seconds: float = Field(
        default=600.0,
        ge=0,
        description="A client that sends a conversation again within this many seconds with "
        "the earlier answer and a complaint appended (instructor's re-ask) makes that answer "
        "suspect; 0: off.",
    )
    reask_phrases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(REASK_PHRASES),
        description="Comma-separated phrases (any case) of which a turn appended after the "
        "earlier answer must hold one to be a complaint, not a conversation going on.",
    )
    stream_usage: bool = Field(
        default=True,
        description="Ask the teacher for token usage on streams whose client did not, "
        "and strip it before the client sees it.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES),
        description="USD per million tokens by teacher model (longest prefix matches).",
    )
    student_price: ModelPrice = Field(
        default_factory=lambda: ModelPrice(input=0.01, output=0.01),
        description="What a student answer costs to serve, in USD per million tokens.",
    )
    target_agreement: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Agreement with the teacher a student must reach on what it answers.",
    )
    publish_min_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Held-out share a version must answer at the target agreement to be published.",
    )
    distill_first_pairs: int = Field(
        default=300, ge=1, description="Curated pairs a task needs before its first version."
    )
    distill_new_pairs: int = Field(
        default=200, ge=1, description="New curated pairs that trigger a retraining."
    )
    train_min_pairs: int = Field(
        default=50, ge=1, description="Fewest curated training pairs any training accepts."
    )
    distill_interval_seconds: float = Field(
        default=300.0, gt=0, description="How often the distiller looks for tasks to train."
    )
    heldout_percent: int = Field(
        default=10, ge=1, le=50, description="Share of pairs held out for evaluation (by hash)."
    )
    near_duplicate_threshold: float = Field(
        default=0.97,
        gt=0,
        le=1,
        description="Prompts closer than this (MiniLM cosine) are "
        "near duplicates; only the first is kept.",
    )
    scrub_pii: bool = Field(
        default=False, description="Replace emails, phone, card and IBAN numbers in training text."
    )
    scrub_pii_at_capture: bool = Field(
        default=False,
        description="Apply the same scrubber to the message texts of every request and "
        "answer before the exchange is written: the store never holds what it finds.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Days an exchange is kept; older ones are deleted in the background "
        "(a live version's held-out exchanges excepted). Unset: kept forever. A task's "
        "retention_days (PATCH /admin/tasks/{task}) overrides it.",
    )
    retention_check_seconds: float = Field(
        default=3600.0, gt=0, description="How often the distiller deletes expired exchanges."
    )
    retention_batch_size: int = Field(
        default=500,
        ge=1,
        description="Exchanges deleted in one transaction, by retention and by DELETE "
        "/admin/exchanges, so that a large deletion never holds a long lock.",
    )
    label_cap: int = Field(
        default=300, ge=1, description="Most training pairs per label for label-like tasks."
    )
    label_max_distinct: int = Field(
        default=50,
        ge=2,
        description="A task is label-like when its teacher answers come from at most this "
        "many distinct answers (case, quotes and a final full stop aside)...",
    )
    label_min_count: int = Field(
        default=3,
        ge=1,
        description="...each seen at least this many times (answers seen less often may "
        "make up 2% of all)...",
    )
    label_max_chars: int = Field(
        default=48, ge=1, description="...and none longer than this many characters."
    )
    student_kinds: Annotated[list[StudentKind], NoDecode] = Field(
        default_factory=lambda: list(STUDENT_KINDS),
        description="Student kinds the distiller trains (comma-separated). A label-like "
        "task gets a classifier and lora, an extractor-shaped JSON task an extractor and "
        "lora, and the one serving more traffic at the target agreement is published (a "
        "tie goes to the cheaper kind); other tasks get lora.",
    )
    classifier_max_heads: int = Field(
        default=256,
        ge=1,
        description="Classifier heads each proxy keeps in memory (least recently used go).",
    )
    text_similarity_threshold: float = Field(
        default=0.85, gt=0, le=1, description="MiniLM cosine at which free-text answers agree."
    )
    embedding_model: str | None = Field(
        default=None,
        description="sentence-transformers model for embeddings. Unset: bundled all-MiniLM-L6-v2.",
    )
    embedding_batch_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long a request for a student inside the proxy (classifier) that "
        "finds the encoder idle waits for others to share its embedding call. Requests that "
        "come while a call runs share the next one whatever this is.",
    )
    embedding_batch_max: int = Field(
        default=16, ge=1, description="Most requests a proxy embeds in one call."
    )
    proxy_torch_threads: int = Field(
        default=1,
        ge=1,
        description="torch threads of a proxy's process (its in-proxy students' embeddings; in "
        "`serve`, the embedded student server's too). One keeps the model from spinning on "
        "cores the event loop needs: a single prompt embeds fastest on one thread.",
    )
    student_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest wait for a student answer before the teacher answers instead.",
    )
    policy_refresh_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often each proxy re-reads routing policies from the store.",
    )
    cache_seconds: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="How long a teacher answer may answer an identical deterministic request "
        "(temperature 0 or a seed) of the same task and client key again, from the store; 0: "
        "no cache. A task's cache_seconds (PATCH /admin/tasks/{task}) overrides it.",
    )
    difficulty_gate: bool = Field(
        default=True,
        description="Send inputs whose nearest known neighbours the student got "
        "wrong straight to the teacher.",
    )
    difficulty_neighbours: int = Field(
        default=5, ge=1, description="Nearest past inputs the difficulty gate looks at."
    )
    difficulty_min_agreement: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Neighbours' agreement below which an input is too difficult for the student.",
    )
    ramp_min_pairs: int = Field(
        default=50,
        ge=1,
        description="Scored pairs at the target agreement an auto-ramp "
        "stage needs before the next.",
    )
    drift_check_seconds: float = Field(
        default=60.0, gt=0, description="How often live and shadow tasks are checked for drift."
    )
    drift_window: int = Field(
        default=200, ge=1, description="Latest scored pairs, and latest inputs, a check looks at."
    )
    drift_min_samples: int = Field(
        default=30, ge=1, description="Fewest scored pairs or inputs a drift check acts on."
    )
    drift_agreement_floor: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Window agreement below which a live task steps down to shadow.",
    )
    drift_input_ratio: float = Field(
        default=1.5,
        gt=1,
        description="Input drift (recent distance over held-out distance to "
        "the training inputs) above which a live task steps down to shadow.",
    )
    lora_epochs: int = Field(default=3, ge=1, description="LoRA training epochs.")
    lora_rank: int = Field(default=16, ge=1, description="LoRA rank r (alpha is 2r).")
    lora_learning_rate: float = Field(default=2e-4, gt=0, description="LoRA learning rate.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )

    # Each named key's SHA-256 (hex) and its tenant: STILLROOM_TENANTS and the file's.
    _key_tenants: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("tenants", mode="before")
    @classmethod
    def _parse_tenants(cls, value: Any) -> Any:
        return parse_tenant_keys(value)

    @model_validator(mode="after")
    def _name_key_tenants(self) -> Settings:
        """Read the tenants file once, here: a bad one stops start-up, not a request."""
        from_file = read_tenants_file(self.tenants_file) if self.tenants_file else {}
        self._key_tenants = tenants_by_key_hash(self.tenants, from_file)
        return self

    @field_validator("student_kinds", "student_urls", "reask_phrases", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):  # as settings_environment() passes lists on
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("student_kinds")
    @classmethod
    def _some_kind(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one student kind: lora, classifier, extractor")
        return list(dict.fromkeys(value))

    @field_validator("prices")
    @classmethod
    def _extend_default_prices(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return {**DEFAULT_PRICES, **value}

    @field_validator("teacher_url", "student_url", "anthropic_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("student_urls")
    @classmethod
    def _strip_slashes(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_http_url(url) for url in value))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def price_of(self, model: str | None) -> ModelPrice | None:
        """The price of a teacher model: an exact entry, else the longest matching prefix
        (``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``)."""
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        prefixes = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    @property
    def key_tenants(self) -> dict[str, str]:
        """The tenant named for each key (by its SHA-256 hex) in STILLROOM_TENANTS and
        STILLROOM_TENANTS_FILE."""
        return self._key_tenants

    @property
    def is_loopback(self) -> bool:
        return self.host in {"127.0.0.1", "::1", "localhost"}

    @property
    def student_replica_urls(self) -> list[str]:
        """The student server replicas: ``STILLROOM_STUDENT_URLS``, else the one
        ``STILLROOM_STUDENT_URL``, else none (the caller's default, the embedded server)."""
        if self.student_urls:
            return list(self.student_urls)
        return [self.student_url] if self.student_url is not None else []


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, the TOML file (argument, else ``STILLROOM_CONFIG``)
    and ``overrides`` (highest precedence; ``None`` values are ignored)."""
    if config_file is None and os.environ.get("STILLROOM_CONFIG"):
        config_file = Path(os.environ["STILLROOM_CONFIG"])
    values = {key: value for key, value in overrides.items() if value is not None}
    if config_file is None:
        return Settings(**values)
    if not config_file.is_file():
        raise ConfigurationError(f"configuration file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return FileSettings(**values)


def settings_reference() -> str:
    """The configuration reference as a Markdown table, generated from :class:`Settings`
    (the README embeds it, and a test keeps the two equal)."""
    rows = ["| env | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        if info.default_factory is not None:
            default: Any = info.default_factory()  # type: ignore[call-arg]
        else:
            default = info.default
        if name == "prices":
            shown = "OpenAI's and Anthropic's list prices of " + ", ".join(
                f"`{m}`" for m in DEFAULT_PRICES
            )
        elif isinstance(default, ModelPrice):
            shown = f"`{default.model_dump_json(exclude_none=True)}`"
        elif default is None or default == [] or default == {}:
            shown = "unset"
        else:
            shown = f"`{default}`"
        description = (info.description or "").replace("|", "\\|")
        rows.append(f"| `STILLROOM_{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
