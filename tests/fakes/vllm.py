"""A fake vLLM server (``--enable-lora``, runtime LoRA updating on), for tests of the
student backend on machines without a GPU.

It speaks vLLM's endpoints with vLLM's answers and error shapes (from
``vllm/entrypoints/openai/models/serving.py``, ``vllm/entrypoints/serve/lora/api_router.py``
and ``api_server.py``): ``POST /v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``
(200 with a plain-text ``Success: ...`` line; ``{"error": {message, type, param, code}}``
with the HTTP status as an integer ``code`` on 400/404), ``GET /v1/models`` (adapters with
``parent`` and ``root``), ``GET /health`` and ``POST /v1/chat/completions`` (``model`` is the
base or an adapter; unknown: 404 ``The model `x` does not exist.``; a ``response_format``
is read as vLLM's ``ResponseFormat``: a malformed one is a 400, and a ``json_object`` or
``json_schema`` one is honoured as vLLM's structured outputs would: the canned text when
it fits, else the schema's smallest document). An adapter path is
loadable when it holds an ``adapter_config.json``, as vLLM's own check. Each adapter answers
the canned text in ``answers`` (set by the test); ``requests`` records every call, and
``unknown_models`` the chat requests for a model it did not hold. :class:`RunningVllm`
serves one on 127.0.0.1 and restarts it empty, as a real restart leaves vLLM.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.wire import (
    SSE_DONE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorBody,
    TokenLogprob,
    Usage,
    new_completion_id,
    sse,
)

from fakes.structured_outputs import structured_answer
from servers import ServerThread

BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class Call:
    method: str
    path: str
    body: Any


def error(message: str, error_type: str, status: int) -> JSONResponse:
    """vLLM's ``ErrorResponse``: the HTTP status is repeated, as an integer, in ``code``."""
    body = ErrorBody.of(message, error_type=error_type, code=status)
    return JSONResponse(body.model_dump(), status_code=status)


def write_adapter_config(directory: Path) -> Path:
    """A directory vLLM would accept as a LoRA adapter path (for this fake: the config)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


class FakeVllm:
    def __init__(self, base_model: str = BASE_MODEL) -> None:
        self.url = ""  # set once its server runs
        self.base_model = base_model
        self.adapters: dict[str, str] = {}  # name: path, in loading order
        self.answers: dict[str, str] = {}  # model name: the text it answers
        self.default_answer = "fake student answer"
        self.token_logprobs: dict[str, float] = {}  # model name: logprob of every token
        self.delay = 0.0  # seconds before each chat answer
        # False: a server that ignores structured outputs (answers may then miss the format)
        self.structured_outputs = True
        self.load_errors: dict[str, str] = {}  # path: message of a 400 when loading it
        self.requests: list[Call] = []
        self.unknown_models: list[str] = []  # asked to answer as a model it did not hold
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/load_lora_adapter", self.load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self.unload, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    def chat_requests(self) -> list[Call]:
        """The ``POST /v1/chat/completions`` calls it was sent, in order."""
        return [call for call in self.requests if call.path == "/v1/chat/completions"]

    async def _receive(self, request: Request) -> Any:
        raw = await request.body()
        body = json.loads(raw) if raw else None
        self.requests.append(Call(request.method, request.url.path, body))
        return body

    async def health(self, request: Request) -> Response:
        await self._receive(request)
        return Response(status_code=200)

    async def models(self, request: Request) -> Response:
        await self._receive(request)
        created = int(time.time())
        cards = [_card(self.base_model, created, root=self.base_model, parent=None)]
        cards[0]["max_model_len"] = 8192
        cards += [
            _card(name, created, root=path, parent=self.base_model)
            for name, path in self.adapters.items()
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def load(self, request: Request) -> Response:
        body = await self._receive(request)
        if not isinstance(body, dict) or "lora_name" not in body or "lora_path" not in body:
            return error(f"1 validation error: {body!r}", "Bad Request", 400)
        name, path = body["lora_name"], body["lora_path"]
        if not name or not path:
            return error(
                "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400
            )
        if name in self.adapters and not body.get("load_inplace"):
            return error(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
                "InvalidUserInput",
                400,
            )
        if path in self.load_errors:
            return error(self.load_errors[path], "BadRequestError", 400)
        if not (Path(path) / "adapter_config.json").is_file():
            return error(
                f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404
            )
        self.adapters[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    async def unload(self, request: Request) -> Response:
        body = await self._receive(request)
        if not isinstance(body, dict) or "lora_name" not in body:
            return error(f"1 validation error: {body!r}", "Bad Request", 400)
        name = body["lora_name"]
        if not name:
            return error(
                "'lora_name' needs to be provided to unload a LoRA adapter.",
                "InvalidUserInput",
                400,
            )
        if name not in self.adapters:
            return error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del self.adapters[name]
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)

    async def chat(self, request: Request) -> Response:
        body = await self._receive(request)
        model = body.get("model")
        if model != self.base_model and model not in self.adapters:
            self.unknown_models.append(str(model))
            return error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        text = self.answers.get(model, self.default_answer)
        if body.get("response_format") is not None and self.structured_outputs:
            try:
                text = structured_answer(body["response_format"], text)
            except ValueError as exc:
                return error(str(exc), "BadRequestError", 400)
        if self.delay:
            await asyncio.sleep(self.delay)
        if body.get("stream"):
            return StreamingResponse(_stream(body, text), media_type="text/event-stream")
        answer = completion(body, text, self.token_logprobs.get(model))
        # As its own type: vLLM's logprobs (a subclass) leave out refusal.
        return JSONResponse(answer.model_dump(mode="json", serialize_as_any=True))


class RunningVllm:
    """A fake vLLM served on 127.0.0.1 (``url``), which can be restarted."""

    def __init__(self, fake: FakeVllm | None = None) -> None:
        self.fake = fake if fake is not None else FakeVllm()
        self.server = ServerThread(self.fake.app).start()
        self.fake.url = self.server.url

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        """Stop, then serve again on the same port with no adapter: vLLM keeps the
        adapters loaded at run time in memory only. Its request log is kept."""
        self.stop()
        self.fake.adapters.clear()
        self.server = ServerThread(self.fake.app, port=self.server.port).start()


def _card(name: str, created: int, *, root: str, parent: str | None) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": None,
        "permission": [
            {
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
        ],
    }


def _words(text: str) -> list[str]:
    return (
        [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))] if text else []
    )


class _VllmLogprobs(ChoiceLogprobs):
    """vLLM's ``ChatCompletionLogProbs`` carries only ``content``."""

    refusal: list[TokenLogprob] | None = Field(default=None, exclude=True)


def _logprobs(text: str, logprob: float | None = None) -> ChoiceLogprobs:
    return _VllmLogprobs(
        content=[
            TokenLogprob.of(word, -0.05 * (i + 1) if logprob is None else logprob)
            for i, word in enumerate(_words(text))
        ]
    )


def _usage(body: dict[str, Any], text: str) -> Usage:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    usage = Usage.of(prompt, len(_words(text)) + 1)
    usage.prompt_tokens_details = None  # vLLM sends it as null
    return usage


def completion(body: dict[str, Any], text: str, logprob: float | None = None) -> ChatCompletion:
    """A non-streamed answer, shaped as vLLM's ``ChatCompletionResponse``: the fields it
    does not fill are there as null (``tool_calls`` as ``[]``), and its own extras too."""
    message = AssistantMessage(
        content=text,
        annotations=None,
        tool_calls=[],
        audio=None,
        function_call=None,
        reasoning_content=None,
    )
    choice = Choice(
        index=0,
        message=message,
        logprobs=_logprobs(text, logprob) if body.get("logprobs") else None,
        finish_reason="stop",
        stop_reason=None,
    )
    return ChatCompletion(
        id=new_completion_id(),
        created=int(time.time()),
        model=body["model"],
        choices=[choice],
        usage=_usage(body, text),
        service_tier=None,
        system_fingerprint=None,
        prompt_logprobs=None,
        kv_transfer_params=None,
    )


def _delta(delta: Delta, finish: bool = False) -> list[ChunkChoice]:
    if not finish:
        return [ChunkChoice(index=0, delta=delta)]
    return [ChunkChoice(index=0, delta=delta, finish_reason="stop", stop_reason=None)]


async def _stream(body: dict[str, Any], text: str) -> AsyncIterator[bytes]:
    completion_id, created = new_completion_id(), int(time.time())

    def event(choices: list[ChunkChoice], usage: Usage | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=completion_id, created=created, model=body["model"], choices=choices
        )
        if usage is not None:
            chunk.usage = usage
        return sse(chunk)

    yield event(_delta(Delta(role="assistant", content="")))
    for word in _words(text):
        yield event(_delta(Delta(content=word)))
    yield event(_delta(Delta(), finish=True))
    if (body.get("stream_options") or {}).get("include_usage"):
        yield event([], usage=_usage(body, text))
    yield SSE_DONE


def make_lora_adapter(base_model: Path, directory: Path, *, seed: int, scale: float = 0.5) -> Path:
    """A real LoRA adapter (r 4, all linear layers) for ``base_model``, saved in ``directory``,
    whose weights are drawn from ``seed`` so that it changes the model's answers. What both
    vLLM and the embedded student server load; reused when ``directory`` already holds it."""
    if (directory / "adapter_model.safetensors").is_file():
        return directory
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_model, local_files_only=True)
    with warnings.catch_warnings():
        # peft asks transformers 5 for the deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(str(directory))
    return directory
