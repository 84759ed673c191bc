"""The OpenAI Responses API (``POST /v1/responses``) read into Chat Completions and back.

A Responses request becomes the Chat Completions request it amounts to
(:func:`chat_request`); a teacher's ``response`` object becomes the ``chat.completion`` it
amounts to (:func:`chat_completion`); a student's ``chat.completion`` becomes the
``response`` OpenAI would have returned (:func:`response_object`), and its stream of
``response.*`` events (:func:`response_events`). :func:`teacher_only` says when a request
needs what only OpenAI has. The teacher's streams are put back together by
:class:`ResponseStreamAssembler`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pydantic import ValidationError

from core.dialects.errors import DialectError
from core.dialects.response_input import (
    LOGPROBS_INCLUDE,
    chat_messages,
    chat_response_format,
    chat_tool,
    chat_tool_choice,
    copy_parameters,
)
from core.dialects.response_stream import ResponseStreamAssembler, response_events
from core.wire import ChatCompletion, ChatCompletionRequest, Choice, Usage
from core.wire.completion import (
    AssistantMessage,
    ChoiceLogprobs,
    CompletionTokensDetails,
    FinishReason,
    PromptTokensDetails,
    TokenLogprob,
)
from core.wire.request import FunctionCall, ToolCall
from core.wire.responses import (
    FunctionCallItem,
    IncompleteDetails,
    OutputContent,
    OutputItem,
    OutputMessage,
    OutputText,
    Reasoning,
    Refusal,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfig,
)

__all__ = [
    "TEACHER_ONLY_REASONS",
    "ResponseStreamAssembler",
    "chat_completion",
    "chat_request",
    "response_events",
    "response_object",
    "teacher_only",
]

TEACHER_ONLY_REASONS: Final = (
    "builtin_tool",
    "background",
    "reasoning_items",
    "server_items",
    "conversation",
    "prompt_template",
    "server_include",
)
"""What :func:`teacher_only` answers: a tool that runs on OpenAI's side (web search, file
search, code interpreter, computer use, image generation, MCP, shell, custom grammars), a
background job, reasoning items (encrypted, only the model that wrote them reads them),
input items that point at OpenAI-held state (``item_reference``, file ids, built-in tool
calls), a stored conversation, a prompt template held by OpenAI, or an ``include`` of
server-side results."""

# ``include`` values that ask only for what a chat answer also has.
_CHAT_INCLUDES = frozenset({LOGPROBS_INCLUDE})


def chat_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Chat Completions request a Responses API request body amounts to.

    ``instructions`` becomes the system message and ``input`` (a string, or items) the
    turns; function tools become chat tools, ``text.format`` the ``response_format``,
    ``max_output_tokens`` ``max_tokens``. What chat cannot say (built-in tools, server-held
    items) is left out of the view: :func:`teacher_only` names it. Raises
    :class:`DialectError` for a body OpenAI would refuse."""
    request = _parse(body)
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
    elif request.input is not None:
        messages += chat_messages(request.input)
    chat: dict[str, Any] = {"model": request.model or _prompt_model(request), "messages": messages}
    tools = [chat_tool(tool, number) for number, tool in enumerate(request.tools or [])]
    if any(tools):
        chat["tools"] = [tool for tool in tools if tool]
    tool_choice = chat_tool_choice(request.tool_choice)
    if tool_choice is not None:
        chat["tool_choice"] = tool_choice
    response_format = chat_response_format(request.text)
    if response_format is not None:
        chat["response_format"] = response_format
    copy_parameters(request, chat)
    if messages:
        _check_chat(chat)
    return chat


def _check_chat(chat: dict[str, Any]) -> None:
    try:
        ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise DialectError(f"not a valid request ({where}): {error['msg']}") from None


def _parse(body: dict[str, Any]) -> ResponsesRequest:
    if not isinstance(body, dict):
        raise DialectError("the request body must be a JSON object")
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"])
        raise DialectError(f"invalid value for '{param}': {error['msg']}", param=param) from None
    if request.model is None and request.prompt is None:
        raise DialectError("missing required parameter: 'model'", param="model")
    return request


def _prompt_model(request: ResponsesRequest) -> str:
    # A prompt template held by OpenAI may name the model itself.
    prompt = request.prompt or {}
    return f"prompt:{prompt.get('id', '')}"


def teacher_only(body: dict[str, Any]) -> str | None:
    """Why only the teacher can answer this request (one of
    :data:`TEACHER_ONLY_REASONS`), or None when a student answering its chat view would
    answer it in full. ``previous_response_id`` is not judged here: whether stillroom
    holds that response is the store's to say."""
    tools = body.get("tools") or []
    if any(isinstance(tool, dict) and tool.get("type") != "function" for tool in tools):
        return "builtin_tool"
    if body.get("background") is True:
        return "background"
    given = body.get("input")
    items: list[Any] = given if isinstance(given, list) else []
    if any(isinstance(item, dict) and item.get("type") == "reasoning" for item in items):
        return "reasoning_items"
    if any(_server_item(item) for item in items):
        return "server_items"
    if body.get("conversation") is not None:
        return "conversation"
    if body.get("prompt") is not None:
        return "prompt_template"
    if any(value not in _CHAT_INCLUDES for value in body.get("include") or []):
        return "server_include"
    return None


_CHAT_ITEMS = frozenset({"message", "function_call", "function_call_output"})


def _server_item(item: object) -> bool:
    """An input item chat cannot carry: a built-in tool's call or output, a reference to a
    stored item, or a part naming a file OpenAI holds."""
    if not isinstance(item, dict):
        return False
    if item.get("type", "message") not in _CHAT_ITEMS:
        return True
    content = item.get("content")
    parts = content if isinstance(content, list) else []
    return any(isinstance(part, dict) and part.get("file_id") for part in parts)


# A teacher's response read as a chat.completion.


def chat_completion(response: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` view of a ``response`` object: the text of its output
    messages as ``content``, its function calls as ``tool_calls`` (``call_id`` as the
    id), its status as ``finish_reason`` and its usage in chat's names. A response that
    did not complete (failed, cancelled, still running) gets ``length``: never ``stop``,
    so it is never taken for a whole answer."""
    texts: list[str] = []
    refusals: list[str] = []
    logprobs: list[TokenLogprob] = []
    calls: list[ToolCall] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    texts.append(part.get("text", ""))
                    logprobs += [_token_logprob(entry) for entry in part.get("logprobs") or []]
                elif part.get("type") == "refusal":
                    refusals.append(part.get("refusal", ""))
        elif item.get("type") == "function_call":
            function = FunctionCall(name=item.get("name"), arguments=item.get("arguments", ""))
            calls.append(ToolCall(id=item.get("call_id"), type="function", function=function))
    message = AssistantMessage(
        content="".join(texts) if texts or not calls else None,
        refusal="".join(refusals) if refusals else None,
        annotations=[],
    )
    if calls:
        message.tool_calls = calls
    choice = Choice(
        index=0,
        message=message,
        logprobs=ChoiceLogprobs(content=logprobs) if logprobs else None,
        finish_reason=_finish_reason(response, bool(calls)),
    )
    completion = ChatCompletion(
        id=str(response.get("id", "")),
        created=int(response.get("created_at") or 0),
        model=str(response.get("model", "")),
        choices=[choice],
    )
    if isinstance(response.get("usage"), dict):
        completion.usage = _chat_usage(response["usage"])
    if response.get("service_tier") is not None:
        completion.service_tier = response["service_tier"]
    return completion.model_dump(mode="json")


def _finish_reason(response: dict[str, Any], has_calls: bool) -> FinishReason:
    status = response.get("status", "completed")
    if status == "completed":
        return "tool_calls" if has_calls else "stop"
    reason = (response.get("incomplete_details") or {}).get("reason")
    return "content_filter" if reason == "content_filter" else "length"


def _token_logprob(entry: dict[str, Any]) -> TokenLogprob:
    return TokenLogprob.model_validate({"top_logprobs": [], **entry})


def _chat_usage(usage: dict[str, Any]) -> Usage:
    given = ResponseUsage.model_validate(usage)
    chat = Usage.of(given.input_tokens, given.output_tokens)
    chat.total_tokens = given.total_tokens or chat.total_tokens
    chat.prompt_tokens_details = PromptTokensDetails(
        cached_tokens=given.input_tokens_details.cached_tokens
    )
    chat.completion_tokens_details = CompletionTokensDetails(
        reasoning_tokens=given.output_tokens_details.reasoning_tokens
    )
    return chat


# A student's chat.completion written as a response object.


def response_object(
    completion: dict[str, Any],
    request: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
) -> dict[str, Any]:
    """The ``response`` OpenAI would return for the Responses ``request`` had it answered
    what ``completion`` (a ``chat.completion``, text or tool calls) says: the request's
    parameters echoed, one output message (``msg_...``) and one ``function_call`` item
    (``fc_...``) per tool call, ``status`` from the finish reason, usage in the
    Responses API's names. Ids of the output items follow from ``response_id``, so the
    same answer is written the same way twice."""
    answer = ChatCompletion.model_validate(completion)
    choice = answer.choices[0]
    status, incomplete = _status(choice.finish_reason)
    item_status = "completed" if status == "completed" else "incomplete"
    output: list[OutputItem] = []
    content: list[OutputContent] = []
    if choice.message.content:
        content.append(OutputText(text=choice.message.content, logprobs=_logprobs(choice)))
    if choice.message.refusal:
        content.append(Refusal(refusal=choice.message.refusal))
    if content or not choice.message.tool_calls:
        message_id = _item_id("msg", response_id, 0)
        output.append(OutputMessage(id=message_id, status=item_status, content=content))
    for number, call in enumerate(choice.message.tool_calls or [], start=1):
        function = call.function or FunctionCall()
        output.append(
            FunctionCallItem(
                id=_item_id("fc", response_id, number),
                status="completed",
                call_id=call.id or _item_id("call", response_id, number),
                name=function.name or "",
                arguments=function.arguments or "",
            )
        )
    body = _echo(request)
    usage = answer.usage or Usage()
    response = ResponseObject(
        id=response_id,
        created_at=created_at,
        status=status,
        completed_at=created_at if status == "completed" else None,
        incomplete_details=incomplete,
        output=output,
        usage=ResponseUsage.of(
            usage.prompt_tokens, usage.completion_tokens, cached_tokens=usage.cached_tokens
        ),
        **body,
    )
    return response.model_dump(mode="json")


def _status(finish_reason: FinishReason) -> tuple[Any, IncompleteDetails | None]:
    if finish_reason == "length":
        return "incomplete", IncompleteDetails(reason="max_output_tokens")
    if finish_reason == "content_filter":
        return "incomplete", IncompleteDetails(reason="content_filter")
    return "completed", None


def _logprobs(choice: Choice) -> list[dict[str, Any]]:
    tokens = choice.logprobs.content if choice.logprobs else None
    return [token.model_dump(mode="json") for token in tokens or []]


def _item_id(prefix: str, response_id: str, number: int) -> str:
    digest = hashlib.sha256(f"{response_id}:{number}".encode()).hexdigest()[:48]
    return f"{prefix}_{digest}"


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters as a response echoes them, OpenAI's defaults elsewhere."""
    given = {key: value for key, value in request.items() if value is not None}
    echo: dict[str, Any] = {"model": str(given.get("model", ""))}
    for name in (
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt_cache_key",
        "safety_identifier",
        "store",
        "temperature",
        "tool_choice",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
        "metadata",
        "background",
    ):
        if name in given:
            echo[name] = given[name]
    if given.get("service_tier") not in (None, "auto"):
        echo["service_tier"] = given["service_tier"]
    text = dict(given.get("text") or {})
    echo["text"] = TextConfig(
        format=text.get("format") or {"type": "text"}, verbosity=text.get("verbosity", "medium")
    )
    reasoning = given.get("reasoning") or {}
    echo["reasoning"] = Reasoning(effort=reasoning.get("effort"), summary=reasoning.get("summary"))
    echo["tools"] = [_echo_tool(tool) for tool in given.get("tools") or []]
    return echo


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return tool
    # OpenAI makes function tools strict unless told otherwise, and says so in the echo.
    return {"description": None, "parameters": None, "strict": True, **tool}
