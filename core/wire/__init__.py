"""Pydantic models of the OpenAI chat completions wire format: what clients send
(:mod:`core.wire.request`) and what stillroom answers, whole (:mod:`core.wire.completion`),
streamed (:mod:`core.wire.stream`) or as an error (:mod:`core.wire.errors`).

Every body stillroom produces is built from these models, which the tests check against
OpenAI's OpenAPI description and the ``openai`` SDK's own types. Every model allows extra
fields: clients send parameters this code does not know about, and the proxy passes them
on untouched. Only what routing and capture read is declared on the request side.
"""

from __future__ import annotations

from core.wire.base import IfGiven, WireModel
from core.wire.completion import (
    FINISH_REASONS,
    AssistantMessage,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    CompletionTokensDetails,
    FinishReason,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
    new_completion_id,
)
from core.wire.errors import ErrorBody, ErrorDetail
from core.wire.request import (
    ChatCompletionRequest,
    ChatMessage,
    FunctionCall,
    StreamOptions,
    ToolCall,
    message_text,
)
from core.wire.stream import (
    SSE_DONE,
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ToolCallDelta,
    completion_chunks,
    sse,
)

__all__ = [
    "FINISH_REASONS",
    "SSE_DONE",
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceLogprobs",
    "ChunkChoice",
    "CompletionTokensDetails",
    "Delta",
    "ErrorBody",
    "ErrorDetail",
    "FinishReason",
    "FunctionCall",
    "FunctionCallDelta",
    "IfGiven",
    "PromptTokensDetails",
    "StreamOptions",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "TopLogprob",
    "Usage",
    "WireModel",
    "completion_chunks",
    "message_text",
    "new_completion_id",
    "sse",
]
