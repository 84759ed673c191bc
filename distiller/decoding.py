"""One answer of a causal LM, token by token on its key/value cache: greedy or sampled,
with OpenAI-shaped token log-probabilities, stop strings, and text released piece by piece
for streaming (never half a character, never what may be the start of a stop string).

With a JSON ``grammar`` the answer is held to it: only tokens that keep it inside the
grammar, and leave room to close it in the tokens left, are picked, so the answer parses.
The log-probabilities reported are the model's own, before that mask (as vLLM's default
``raw_logprobs``), so a confidence means the same with and without a grammar.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import torch

from distiller.json_constraint import Grammar, JsonConstraint

# vLLM's floor for log-probabilities, so that -inf never reaches JSON.
LOGPROB_FLOOR = -9999.0


class TopLogprob(TypedDict):
    """One alternative token at a position, as OpenAI's ``top_logprobs`` entries."""

    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TypedDict):
    """One generated token, as an entry of OpenAI's ``logprobs.content``."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@dataclass(frozen=True)
class Generation:
    """A finished answer. ``tokens`` (and ``token_ids``) are the answer's tokens; the
    end-of-turn token is counted in ``completion_tokens`` but is not among them (as in
    OpenAI's logprobs)."""

    text: str
    tokens: list[TokenLogprob]
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability of the answer's tokens; ``-inf`` for an empty answer."""
        if not self.tokens:
            return -math.inf
        return math.fsum(token["logprob"] for token in self.tokens) / len(self.tokens)


@dataclass(frozen=True)
class StreamPiece:
    """A piece of an answer being streamed: new text and the tokens that completed it."""

    text: str
    tokens: list[TokenLogprob]


StreamEvent = StreamPiece | Generation
"""What a stream yields: pieces, then the finished :class:`Generation` last."""


@dataclass(frozen=True)
class Decoder:
    """How to decode: the model and tokenizer, the tokens that end a turn, and the
    sampling parameters of one request (``temperature`` 0 is greedy)."""

    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    device: str
    temperature: float = 0.0
    top_logprobs: int = 0
    stop: tuple[str, ...] = ()
    grammar: Grammar | None = None

    def run(
        self,
        prompt: list[int],
        budget: int,
        *,
        seed: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        """Up to ``budget`` new tokens after ``prompt``: pieces, then the Generation.
        Setting ``cancel`` ends the answer before the next token ("length")."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        stop = [s for s in self.stop if s]
        ids: list[int] = []
        tokens: list[TokenLogprob] = []
        sent_text = sent_tokens = 0
        text, stopped, ended_by_eos = "", False, False
        inputs = torch.tensor([prompt], device=self.device)
        cache = None
        constraint = JsonConstraint(self.grammar, self.eos_ids) if self.grammar else None
        for step in range(budget):
            if cancel is not None and cancel.is_set():
                break
            with torch.inference_mode():
                out = self.model(input_ids=inputs, cache=cache, use_cache=True)
                logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                if constraint is None:
                    token = self._pick(logprobs, generator)
                else:
                    allowed = constraint.allowed(budget - step).to(logprobs.device)
                    token = self._pick(logprobs.masked_fill(~allowed, -math.inf), generator)
            cache = out.cache
            if token in self.eos_ids:
                stopped = ended_by_eos = True
                break
            if constraint is not None:
                constraint.advance(token)
            ids.append(token)
            tokens.append(self._entry(token, logprobs))
            inputs = torch.tensor([[token]], device=self.device)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            cut = _stop_at(text, stop)
            if cut is not None:
                text, stopped = text[:cut], True
                break
            ready = _ready_length(text, stop)
            if ready > sent_text:
                yield StreamPiece(text[sent_text:ready], tokens[sent_tokens:])
                sent_text, sent_tokens = ready, len(tokens)
        if len(text) > sent_text or len(tokens) > sent_tokens:
            yield StreamPiece(text[sent_text:], tokens[sent_tokens:])
        yield Generation(
            text=text,
            tokens=tokens,
            token_ids=ids,
            prompt_tokens=len(prompt),
            completion_tokens=len(ids) + int(ended_by_eos),
            finish_reason="stop" if stopped else "length",
        )

    def _pick(self, logprobs: torch.Tensor, generator: torch.Generator | None) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logprobs))
        probabilities = torch.softmax(logprobs / self.temperature, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=generator))

    def _entry(self, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        top: list[TopLogprob] = []
        if self.top_logprobs > 0:
            values, indices = torch.topk(logprobs, self.top_logprobs)
            for value, index in zip(values.tolist(), indices.tolist(), strict=True):
                piece = self.tokenizer.decode([index])
                top.append({"token": piece, "logprob": _floor(value), "bytes": _bytes(piece)})
        piece = self.tokenizer.decode([token])
        return {
            "token": piece,
            "logprob": _floor(float(logprobs[token])),
            "bytes": _bytes(piece),
            "top_logprobs": top,
        }


def _floor(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def _bytes(piece: str) -> list[int]:
    # As vLLM: the UTF-8 of the token's text (a partial character shows as U+FFFD).
    return list(piece.encode("utf-8", errors="replace"))


def _stop_at(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string starts in ``text``, if one is there."""
    found = [index for index in (text.find(s) for s in stop) if index >= 0]
    return min(found) if found else None


def _ready_length(text: str, stop: list[str]) -> int:
    """How much of ``text`` can be sent: not a half-decoded character at its end, nor an
    end that may be the start of a stop string."""
    end = len(text.rstrip("\ufffd"))
    for s in stop:
        for size in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:size]):
                end -= size
                break
    return end
