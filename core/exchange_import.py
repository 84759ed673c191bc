"""Teacher pairs loaded from a file, so that a task can train before its traffic arrives.

Two line formats, told apart per line:

- OpenAI's chat fine-tuning JSONL: ``{"messages": [...], "tools"?, "parallel_tool_calls"?}``
  whose last message is the assistant's answer (text or ``tool_calls``). What
  ``GET /admin/tasks/{task}/export`` writes, so an export imports back as the same pairs.
  A final assistant turn with ``"weight": 0`` is not to be trained on: the line is skipped.
- Chat-completion exchanges: ``{"request": {chat completion request}, "response":
  {chat.completion}}``, as a logging proxy or a batch job keeps them.

Each line becomes one stored exchange of the task: origin ``import``, served by the
teacher, status ok. Its request is the chat request (without the answer); a line that names
no model gets :data:`IMPORT_MODEL`. Lines asking what an earlier line or a stored exchange
of the task already asked (same :func:`core.request_identity.request_hash`) are duplicates.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import col

from core.errors import InvalidRequestError
from core.request_identity import DELIVERY_FIELDS, end_user, request_hash
from core.tables import TASK_NAME_MAX, Exchange, ExchangeCreate, Task
from core.tasks import _NAME as TASK_NAME
from core.tenants import TENANT, split_task_key
from core.wire import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    FunctionCall,
    ToolCall,
    Usage,
    new_completion_id,
)

IMPORT_MODEL = "imported"  # the request's model when a fine-tuning line names none
_REQUEST_FIELDS = ("tools", "parallel_tool_calls", "tool_choice", "response_format")
_HASH_CHUNK = 500  # request hashes looked up in the store per query


class LineError(ValueError):
    """Why one line of an import file is not a pair."""


@dataclass(frozen=True, slots=True)
class ImportedPair:
    """One line's chat request and the teacher's answer to it."""

    line: int
    request: dict[str, Any]
    response: ChatCompletion


@dataclass(slots=True)
class ImportOutcome:
    """What an import did: pairs stored, duplicates and skipped lines left out, and the
    lines that were not pairs (``errors``: line number and why)."""

    imported: int = 0
    duplicates: int = 0
    skipped: int = 0
    invalid: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "invalid": self.invalid,
            "errors": [{"line": line, "message": message} for line, message in self.errors],
        }


def parse_line(text: bytes, number: int) -> ImportedPair | None:
    """The pair on line ``number``; None for a blank line or one not to be trained on
    (weight 0). Raises :class:`LineError` saying what is wrong."""
    if not text.strip():
        return None
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise LineError("a line must be a JSON object")
    if "request" in record or "response" in record:
        return _exchange_pair(record, number)
    if "messages" in record:
        return _fine_tuning_pair(record, number)
    raise LineError('expected "messages" (fine-tuning) or "request" and "response" (exchange)')


def _fine_tuning_pair(record: dict[str, Any], number: int) -> ImportedPair | None:
    messages = record["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise LineError('"messages" must list the prompt and then the assistant\'s answer')
    if not all(isinstance(m, dict) for m in messages):
        raise LineError('every entry of "messages" must be an object')
    answer = messages[-1]
    if answer.get("role") != "assistant":
        raise LineError("the last message must be the assistant's answer")
    if answer.get("weight") == 0:
        return None
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages[:-1]]
    request: dict[str, Any] = {"model": record.get("model") or IMPORT_MODEL, "messages": prompt}
    request.update({k: record[k] for k in _REQUEST_FIELDS if record.get(k) is not None})
    _validate_request(request)
    try:
        message = ChatMessage.model_validate(answer)
    except ValidationError as exc:
        raise LineError(f"the assistant's answer: {_first_problem(exc)}") from None
    response = _completion(message, model=str(request["model"]))
    return ImportedPair(number, request, response)


def _completion(message: ChatMessage, *, model: str) -> ChatCompletion:
    """The chat.completion a teacher answering ``message`` would have sent."""
    calls = [
        ToolCall(
            id=call.id or f"call_{index}",
            type="function",
            function=FunctionCall(name=call.function.name, arguments=call.function.arguments or ""),
        )
        for index, call in enumerate(message.tool_calls or [])
        if call.function is not None and call.function.name
    ]
    if message.tool_calls and len(calls) != len(message.tool_calls):
        raise LineError("every tool call of the answer needs a function name")
    content = message.content if isinstance(message.content, str) else None
    if isinstance(message.content, list):
        content = "".join(
            str(p.get("text", "")) for p in message.content if p.get("type") == "text"
        )
    if not calls and not (content and content.strip()):
        raise LineError("the assistant's answer has neither content nor tool_calls")
    reply = AssistantMessage(content=content or None, annotations=[])
    if calls:
        reply.tool_calls = calls
    choice = Choice(index=0, message=reply, finish_reason="tool_calls" if calls else "stop")
    return ChatCompletion(
        id=new_completion_id(), created=int(time.time()), model=model, choices=[choice]
    )


def _exchange_pair(record: dict[str, Any], number: int) -> ImportedPair:
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict) or not isinstance(response, dict):
        raise LineError('an exchange line needs "request" and "response" objects')
    request = {k: v for k, v in request.items() if k not in DELIVERY_FIELDS}
    request.setdefault("model", IMPORT_MODEL)
    _validate_request(request)
    try:
        completion = ChatCompletion.model_validate(response)
    except ValidationError as exc:
        raise LineError(f"response: {_first_problem(exc)}") from None
    if not completion.choices:
        raise LineError("response: a chat.completion with no choices is no answer")
    return ImportedPair(number, request, completion)


def _validate_request(request: dict[str, Any]) -> None:
    try:
        chat = ChatCompletionRequest.model_validate(request)
    except ValidationError as exc:
        raise LineError(f"request: {_first_problem(exc)}") from None
    if chat.messages[-1].role == "assistant" and not chat.messages[-1].tool_calls:
        raise LineError("request: its last message is an assistant's; nothing is asked")


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "value"
    return f"{where}: {error['msg']}"


def parse_lines(
    lines: Iterable[bytes], outcome: ImportOutcome, *, start: int = 1
) -> list[ImportedPair]:
    """The pairs of ``lines`` (numbered from ``start``), errors and skips noted in
    ``outcome``."""
    pairs: list[ImportedPair] = []
    for number, text in enumerate(lines, start=start):
        try:
            pair = parse_line(text, number)
        except LineError as exc:
            outcome.invalid += 1
            outcome.errors.append((number, str(exc)))
            continue
        if pair is None:
            outcome.skipped += text.strip() != b""
            continue
        pairs.append(pair)
    return pairs


def check_task_key(task: str) -> None:
    """Raise unless ``task`` is a task's key: a valid name, and ``@tenant`` for another
    tenant than the default one."""
    name, tenant = split_task_key(task)
    if not TASK_NAME.match(name) or not TENANT.match(tenant):
        raise InvalidRequestError(
            f"invalid task {task!r}: use 1-{TASK_NAME_MAX} letters, digits and . _ : -, "
            "starting with a letter or digit, and @tenant for a tenant's task",
            param="task",
        )


def store_pairs(
    *, engine: Engine, task: str, pairs: Sequence[ImportedPair], outcome: ImportOutcome
) -> None:
    """Store ``pairs`` as ``task``'s imported exchanges in one transaction, creating the
    task (its tenant named by its key) when missing; duplicates are counted, not stored."""
    _, tenant = split_task_key(task)
    fresh: dict[str, ImportedPair] = {}
    for pair in pairs:
        fresh.setdefault(request_hash(pair.request), pair)
    outcome.duplicates += len(pairs) - len(fresh)
    with engine.begin() as connection:
        stored = _stored_hashes(connection, task, list(fresh))
        outcome.duplicates += len(stored)
        rows = [
            _exchange(task, tenant, digest, pair).row()
            for digest, pair in fresh.items()
            if digest not in stored
        ]
        task_row = {"name": task, "tenant": tenant, "mode": "off", "cutover_percent": 0.0}
        connection.execute(_insert(engine, Task).on_conflict_do_nothing(), [task_row])
        if rows:
            connection.execute(sa.insert(Exchange), rows)
    outcome.imported += len(rows)


def _stored_hashes(connection: sa.Connection, task: str, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), _HASH_CHUNK):
        chunk = hashes[start : start + _HASH_CHUNK]
        query = sa.select(col(Exchange.request_hash)).where(
            col(Exchange.task) == task, col(Exchange.request_hash).in_(chunk)
        )
        found.update(h for h in connection.execute(query).scalars() if h is not None)
    return found


def _exchange(task: str, tenant: str, digest: str, pair: ImportedPair) -> ExchangeCreate:
    usage = pair.response.usage or Usage()
    choice = pair.response.choices[0]
    return ExchangeCreate(
        id=uuid.uuid4().hex,
        task=task,
        served_by="teacher",
        origin="import",
        status="ok",
        http_status=200,
        model=str(pair.request.get("model") or IMPORT_MODEL),
        request=pair.request,
        response=pair.response.model_dump(mode="json"),
        finish_reason=choice.finish_reason,
        prompt_tokens=usage.prompt_tokens if pair.response.usage else None,
        completion_tokens=usage.completion_tokens if pair.response.usage else None,
        latency_ms=0.0,
        tenant=tenant,
        end_user=end_user(pair.request),
        request_hash=digest,
    )


def _insert(engine: Engine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
