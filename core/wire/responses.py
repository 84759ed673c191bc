"""The OpenAI Responses API as stillroom answers it: the ``response`` object of a
non-streamed ``POST /v1/responses`` (OpenAI's ``Response``, the ``openai`` SDK's
``openai.types.responses.Response``) and the ``response.*`` events of a streamed one
(``ResponseStreamEvent``), in server-sent events framing with an ``event:`` line each.

Only what a student's answer holds is modelled on the output side: assistant messages
(``output_text`` or ``refusal`` parts) and function calls. Every field the published
schema requires is declared, ``null`` where OpenAI sends ``null``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from core.wire.base import IfGiven, WireModel

ResponseStatus = Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]
IncompleteReason = Literal["max_output_tokens", "content_filter"]


class ResponsesRequest(WireModel):
    """What a client sends to ``POST /v1/responses``: the parameters the canonical view
    reads, with strict scalar types (as :class:`core.wire.ChatCompletionRequest`: a
    ``"stream": "yes"`` is refused, not coerced). ``input`` items are checked one by one
    by the conversion, which names the item at fault."""

    model: StrictStr | None = Field(default=None, min_length=1)
    input: StrictStr | list[Any] | None = None
    instructions: StrictStr | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    temperature: StrictFloat | None = None
    top_p: StrictFloat | None = None
    top_logprobs: StrictInt | None = None
    max_output_tokens: StrictInt | None = Field(default=None, ge=1)
    max_tool_calls: StrictInt | None = None
    stream: StrictBool | None = None
    background: StrictBool | None = None
    store: StrictBool | None = None
    parallel_tool_calls: StrictBool | None = None
    user: StrictStr | None = None
    safety_identifier: StrictStr | None = None
    prompt_cache_key: StrictStr | None = None
    service_tier: StrictStr | None = None
    metadata: dict[str, StrictStr] | None = None
    include: list[StrictStr] | None = None
    previous_response_id: StrictStr | None = None
    conversation: StrictStr | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None


class InputTokensDetails(WireModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0


class ResponseUsage(WireModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    @classmethod
    def of(cls, input_tokens: int, output_tokens: int, *, cached_tokens: int = 0) -> ResponseUsage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        )


class OutputText(WireModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class Refusal(WireModel):
    type: Literal["refusal"] = "refusal"
    refusal: str


OutputContent = Annotated[OutputText | Refusal, Field(discriminator="type")]


class OutputMessage(WireModel):
    id: str
    type: Literal["message"] = "message"
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputContent] = Field(default_factory=list)


class FunctionCallItem(WireModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: ItemStatus
    arguments: str
    call_id: str
    name: str


OutputItem = Annotated[OutputMessage | FunctionCallItem, Field(discriminator="type")]


class IncompleteDetails(WireModel):
    reason: IncompleteReason


class ResponseError(WireModel):
    code: str
    message: str


class Reasoning(WireModel):
    effort: str | None = None
    summary: str | None = None


class TextConfig(WireModel):
    format: dict[str, Any] = Field(default_factory=lambda: {"type": "text"})
    verbosity: IfGiven[str] = None


class ResponseObject(WireModel):
    """A whole response, as ``POST /v1/responses`` and ``GET /v1/responses/{id}`` return
    it; the request's parameters are echoed with OpenAI's defaults where it gave none."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | list[dict[str, Any]] | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: Reasoning = Field(default_factory=Reasoning)
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float = 1.0
    text: TextConfig = Field(default_factory=TextConfig)
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_logprobs: int = 0
    top_p: float = 1.0
    truncation: Literal["auto", "disabled"] = "disabled"
    # Absent until the response ends (the schema does not let it be null).
    usage: IfGiven[ResponseUsage] = None
    # The schema types it a string; sent only when the request gave one.
    user: IfGiven[str] = None
    metadata: dict[str, str] = Field(default_factory=dict)


# The input items of a stored response (``GET /v1/responses/{id}/input_items``).


class InputMessageItem(WireModel):
    """A message the request gave as input (OpenAI's ``InputMessageResource``); the
    assistant's turns are :class:`OutputMessage` items."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer"]
    status: ItemStatus = "completed"
    content: list[dict[str, Any]]  # input_text, input_image, input_file parts


class FunctionCallOutputItem(WireModel):
    id: str
    type: Literal["function_call_output"] = "function_call_output"
    status: ItemStatus = "completed"
    call_id: str
    output: str | list[dict[str, Any]]


# What a request's input is listed as (messages of either side share one ``type``).
InputItem = InputMessageItem | OutputMessage | FunctionCallItem | FunctionCallOutputItem


class ResponseItemList(WireModel):
    """One page of a response's input items (OpenAI's ``ResponseItemList``)."""

    object: Literal["list"] = "list"
    data: list[InputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


# The stream: one model per event type stillroom sends.


class ResponseLifecycleEvent(WireModel):
    """The response as it stands: at the start (``created``, ``in_progress``, with no
    output yet) and at the end (``completed``, ``incomplete``, ``failed``)."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(WireModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(WireModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputContent


class TextDeltaEvent(WireModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(WireModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class RefusalDeltaEvent(WireModel):
    type: Literal["response.refusal.delta"] = "response.refusal.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str


class RefusalDoneEvent(WireModel):
    type: Literal["response.refusal.done"] = "response.refusal.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    refusal: str


class ArgumentsDeltaEvent(WireModel):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(WireModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ResponseErrorEvent(WireModel):
    """An ``error`` event: the stream failed before its response could end."""

    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None = None
    message: str
    param: str | None = None


ResponseStreamEvent = (
    ResponseLifecycleEvent
    | OutputItemEvent
    | ContentPartEvent
    | TextDeltaEvent
    | TextDoneEvent
    | RefusalDeltaEvent
    | RefusalDoneEvent
    | ArgumentsDeltaEvent
    | ArgumentsDoneEvent
    | ResponseErrorEvent
)


def named_sse(event_type: str, event: BaseModel) -> bytes:
    """One server-sent event with an ``event:`` line, as the Responses and Messages APIs
    frame theirs."""
    return f"event: {event_type}\ndata: ".encode() + event.model_dump_json().encode() + b"\n\n"
