"""The embedded student server (``stillroom student``): vLLM's OpenAI-compatible HTTP API
over one :class:`~distiller.inference.StudentModel`, so a router talks to it and to vLLM
the same way.

Endpoints and their answers follow vLLM's (``vllm/entrypoints/openai`` and
``vllm/entrypoints/serve/lora``): ``POST /v1/chat/completions`` (``model`` is the served
base name or a LoRA adapter's name), ``GET /v1/models`` (adapters carry ``parent``, the
base, and ``root``, their path), ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter`` (200 with a plain-text ``Success: ...`` line) and
``GET /health``. A ``response_format`` of ``json_object`` or ``json_schema`` holds the
answer to JSON, or to the schema, as vLLM's structured outputs do (the subset of JSON
Schema followed is in ``distiller.json_grammar``). Errors are vLLM's
``{"error": {"message", "type", "param", "code"}}`` with the HTTP status as ``code`` (an
integer, where OpenAI sends a string or null).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, StrictFloat, StrictInt
from starlette.exceptions import HTTPException

from core.wire import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorBody,
    FinishReason,
    TokenLogprob,
    Usage,
    message_text,
    new_completion_id,
    sse,
)
from distiller.decoding import Generation, StreamEvent
from distiller.decoding import TokenLogprob as GeneratedToken
from distiller.inference import (
    AdapterExistsError,
    AdapterLoadError,
    AdapterMissingError,
    AdapterNotFoundError,
    GenerateOptions,
    PromptError,
    ResponseFormatError,
    StudentModel,
)


class StudentServerError(Exception):
    """An error answered in vLLM's shape: HTTP ``status``, ``type`` and message."""

    def __init__(self, message: str, *, status: HTTPStatus, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type

    def body(self) -> ErrorBody:
        return ErrorBody.of(self.message, error_type=self.error_type, code=self.status.value)


def _bad_request(message: str, error_type: str = "BadRequestError") -> StudentServerError:
    return StudentServerError(message, status=HTTPStatus.BAD_REQUEST, error_type=error_type)


def _not_found(message: str) -> StudentServerError:
    return StudentServerError(message, status=HTTPStatus.NOT_FOUND, error_type="NotFoundError")


class StudentChatRequest(ChatCompletionRequest):
    """The sampling parameters this server reads, on top of the shared wire model."""

    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: StrictFloat | None = Field(default=None, ge=0)
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    stop: str | list[str] | None = None
    seed: StrictInt | None = None


class LoadLoRAAdapterRequest(BaseModel):
    """Body of ``POST /v1/load_lora_adapter``, as vLLM reads it."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """Body of ``POST /v1/unload_lora_adapter``, as vLLM reads it."""

    lora_name: str
    lora_int_id: int | None = None


@dataclass
class _Serving:
    model: StudentModel
    served_model_name: str
    created: int

    def adapter_for(self, model: str) -> str | None:
        """The adapter a request's ``model`` names (None: the base); 404 if neither."""
        if model in self.model.adapters():
            return model
        if model == self.served_model_name:
            return None
        raise _not_found(f"The model `{model}` does not exist.")


def _serving(request: Request) -> _Serving:
    serving: _Serving = request.app.state.serving
    return serving


ServingDep = Annotated[_Serving, Depends(_serving)]
router = APIRouter()


@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/v1/models")
async def models(serving: ServingDep) -> JSONResponse:
    base = _model_card(
        serving.served_model_name, serving.created, root=serving.model.base_model, parent=None
    )
    base["max_model_len"] = serving.model.context_length
    cards = [base]
    for name, root in serving.model.adapter_paths().items():
        cards.append(_model_card(name, serving.created, root=root, parent=base["id"]))
    return JSONResponse({"object": "list", "data": cards})


def _model_card(name: str, created: int, *, root: str, parent: str | None) -> dict[str, Any]:
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "stillroom",
        "root": root,
        "parent": parent,
        "max_model_len": None,
        "permission": [permission],
    }


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRAAdapterRequest, serving: ServingDep) -> Response:
    if not body.lora_name or not body.lora_path:
        raise _bad_request("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
    name = body.lora_name
    try:
        await serving.model.in_worker(
            serving.model.load_adapter, name, body.lora_path, replace=body.load_inplace
        )
    except AdapterExistsError:
        raise _bad_request(
            f"The lora adapter '{name}' has already been loaded. If you want to load the "
            "adapter in place, set 'load_inplace' to True.",
            "InvalidUserInput",
        ) from None
    except AdapterMissingError:
        raise _not_found(
            f"Loading lora {name} failed: No adapter found for {body.lora_path}"
        ) from None
    except AdapterLoadError as exc:
        raise _bad_request(str(exc)) from None
    return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, serving: ServingDep) -> Response:
    name = body.lora_name
    if not name:
        raise _bad_request(
            "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput"
        )
    try:
        await serving.model.in_worker(serving.model.unload_adapter, name)
    except AdapterNotFoundError:
        raise _not_found(f"The lora adapter '{name}' cannot be found.") from None
    return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)


@dataclass(frozen=True)
class _Answer:
    """What one chat completion request asks of the model, and how to shape the reply."""

    id: str
    created: int
    model: str
    messages: list[dict[str, Any]]
    options: GenerateOptions
    logprobs: bool


def _answer(body: StudentChatRequest, serving: _Serving) -> _Answer:
    adapter = serving.adapter_for(body.model)
    if (body.n or 1) != 1:
        raise _bad_request("n > 1 is not supported by the embedded student server.")
    top_logprobs = body.top_logprobs or 0
    if top_logprobs and not body.logprobs:
        raise _bad_request("when using `top_logprobs`, `logprobs` must be set to true.")
    options = GenerateOptions(
        adapter=adapter,
        # As vLLM: without a limit, the answer may fill the rest of the context.
        max_new_tokens=body.max_completion_tokens or body.max_tokens or 1 << 30,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_logprobs=top_logprobs,
        stop=[body.stop] if isinstance(body.stop, str) else body.stop,
        seed=body.seed,
        response_format=body.response_format,
    )
    return _Answer(
        id=new_completion_id(),
        created=int(time.time()),
        model=body.model,
        messages=[{"role": m.role, "content": message_text(m)} for m in body.messages],
        options=options,
        logprobs=bool(body.logprobs),
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: StudentChatRequest, serving: ServingDep
) -> JSONResponse | StreamingResponse:
    answer = _answer(body, serving)
    try:
        if not body.stream:
            generation = await serving.model.agenerate(answer.messages, **answer.options)
            return JSONResponse(_completion(answer, generation).model_dump(mode="json"))
        events = serving.model.astream(answer.messages, **answer.options)
        first = await anext(events)
    except AdapterNotFoundError:  # unloaded while the request waited for the model
        raise _not_found(f"The model `{answer.model}` does not exist.") from None
    except (PromptError, ResponseFormatError) as exc:
        raise _bad_request(str(exc)) from None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse(answer, first, events, include_usage), media_type="text/event-stream"
    )


def _usage(generation: Generation) -> Usage:
    return Usage.of(generation.prompt_tokens, generation.completion_tokens)


def _logprobs(answer: _Answer, tokens: list[GeneratedToken]) -> ChoiceLogprobs | None:
    if not answer.logprobs:
        return None
    return ChoiceLogprobs(content=[TokenLogprob.model_validate(token) for token in tokens])


def _completion(answer: _Answer, generation: Generation) -> ChatCompletion:
    # vLLM's extras: an empty tool_calls list, stop_reason and system_fingerprint as null.
    choice = Choice(
        index=0,
        message=AssistantMessage(content=generation.text, tool_calls=[]),
        logprobs=_logprobs(answer, generation.tokens),
        finish_reason=generation.finish_reason,
        stop_reason=None,
    )
    return ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=answer.model,
        choices=[choice],
        usage=_usage(generation),
        system_fingerprint=None,
    )


def _chunk(answer: _Answer, choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
    chunk = ChatCompletionChunk(
        id=answer.id, created=answer.created, model=answer.model, choices=choices
    )
    if usage is not None:
        chunk.usage = usage
    return sse(chunk)


def _delta(
    delta: Delta, logprobs: ChoiceLogprobs | None = None, finish_reason: FinishReason | None = None
) -> list[ChunkChoice]:
    # As vLLM: the finishing chunk says stop_reason (null: no stop string or token id).
    extra: dict[str, Any] = {"stop_reason": None} if finish_reason is not None else {}
    return [
        ChunkChoice(index=0, delta=delta, logprobs=logprobs, finish_reason=finish_reason, **extra)
    ]


async def _sse(
    answer: _Answer,
    first: StreamEvent,
    events: AsyncGenerator[StreamEvent, None],
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The answer as vLLM streams it: a role chunk, content chunks, a finishing chunk,
    the usage chunk when asked for, then ``[DONE]``."""
    try:
        yield _chunk(answer, _delta(Delta(role="assistant", content="")))
        event = first
        while not isinstance(event, Generation):
            logprobs = _logprobs(answer, event.tokens)
            yield _chunk(answer, _delta(Delta(content=event.text), logprobs))
            event = await anext(events)
        yield _chunk(answer, _delta(Delta(), finish_reason=event.finish_reason))
        if include_usage:
            yield _chunk(answer, [], usage=_usage(event))
    except (AdapterNotFoundError, PromptError) as exc:
        yield sse(_bad_request(str(exc)).body())
    finally:
        await events.aclose()  # stops the model when the client went away
    yield SSE_DONE


async def _error(_request: Request, exc: Exception) -> JSONResponse:
    """Every error in vLLM's shape; request validation errors are 400, as in vLLM."""
    if isinstance(exc, RequestValidationError):
        exc = _bad_request(f"{exc} {exc.errors()}", "Bad Request")
    elif isinstance(exc, HTTPException):
        status = HTTPStatus(exc.status_code)
        exc = StudentServerError(str(exc.detail), status=status, error_type=status.phrase)
    assert isinstance(exc, StudentServerError)
    return JSONResponse(exc.body().model_dump(), status_code=exc.status)


def create_student_app(
    *,
    base_model: str,
    adapters: dict[str, str] | None = None,
    served_model_name: str | None = None,
) -> FastAPI:
    """The embedded student server for ``base_model`` (a Hugging Face id or a local
    directory), with ``adapters`` (name: path) loaded at start-up. The base answers to
    ``served_model_name`` (default: ``base_model`` as given, as in vLLM). The model is
    loaded in the app's lifespan; a start-up adapter that fails to load fails the start."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = await asyncio.to_thread(StudentModel, base_model)
        try:
            for name, path in (adapters or {}).items():
                await model.in_worker(model.load_adapter, name, path)
            app.state.serving = _Serving(
                model=model,
                served_model_name=served_model_name or base_model,
                created=int(time.time()),
            )
            yield
        finally:
            await asyncio.to_thread(model.close)

    app = FastAPI(
        title="stillroom student",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    for error in (StudentServerError, RequestValidationError, HTTPException):
        app.add_exception_handler(error, _error)
    app.include_router(router)
    return app
