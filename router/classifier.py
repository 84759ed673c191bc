"""Classifier students, answered inside the proxy: no hop to a student server.

The proxy's one encoder embeds the request's prompt key (the same embedding the difficulty
gate uses); the version's head, a matrix product on that embedding, gives calibrated
probabilities over the task's labels, and the answer is the teacher's own answer string for
the likeliest one. An input unlike every label's training inputs is declined (the teacher
answers it).

Heads are read from the store (every replica can) and kept in a bounded LRU keyed by version
id (:class:`router.stored_models.StoredModels`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from core.classifier import Head, Prediction
from core.embedding import Encoder
from core.profile import prompt_chars, prompt_key
from core.wire import ChatCompletion, ChoiceLogprobs, TokenLogprob, TopLogprob, Usage
from router.policy import Policy, StudentRef
from router.stored_models import StoredModels
from router.student import PromptEmbedding, StudentDeclined, StudentReply, StudentUnavailable

log = logging.getLogger("stillroom.router")

CHARS_PER_TOKEN = 4  # usage is estimated: a classifier has no tokenizer of the teacher's


class ClassifierStudent:
    """A :class:`router.student.Student` for ``classifier`` versions."""

    def __init__(
        self, *, engine: Engine, encoder: Encoder, encoder_name: str, max_heads: int = 256
    ) -> None:
        self.encoder = encoder
        self.encoder_name = encoder_name
        self._heads = StoredModels(
            engine=engine, decode=self._decode, what="classifier head", max_models=max_heads
        )
        self._warming: asyncio.Future[None] | None = None

    def embed(self, messages: list[dict[str, Any]]) -> PromptEmbedding:
        """The request's prompt key, embedded (blocking: call it from a worker thread)."""
        began = time.perf_counter()
        vector = self.encoder.encode([prompt_key(messages)])[0]
        return PromptEmbedding(vector, time.perf_counter() - began)

    def embed_many(self, batch: Sequence[list[dict[str, Any]]]) -> list[PromptEmbedding]:
        """Each request's prompt key, embedded in one call of the encoder (blocking: call it
        from a worker thread); each embedding's time is the call's."""
        began = time.perf_counter()
        vectors = self.encoder.encode([prompt_key(messages) for messages in batch])
        seconds = time.perf_counter() - began
        return [PromptEmbedding(vector, seconds) for vector in vectors]

    async def answer(
        self, student: StudentRef, payload: dict[str, Any], *, prompt: PromptEmbedding | None = None
    ) -> StudentReply:
        head = await self.head(student.version_id)
        if prompt is None:
            prompt = await asyncio.to_thread(self.embed, payload.get("messages") or [])
        began = time.perf_counter()
        if prompt.vector.shape[-1] != head.dimension:
            raise StudentUnavailable(
                f"v{student.number}'s head takes {head.dimension}-dimensional embeddings; "
                f"this proxy's encoder gives {prompt.vector.shape[-1]}"
            )
        prediction = head.predict(prompt.vector)
        if not prediction.familiar:
            raise StudentDeclined(
                "unfamiliar",
                f"input unlike v{student.number}'s training set (similarity "
                f"{prediction.similarity:.2f} < {head.min_similarity:.2f})",
            )
        seconds = prompt.seconds + time.perf_counter() - began
        return StudentReply(
            completion=completion(prediction, payload),
            text=prediction.answer,
            confidence=prediction.logprob,
            seconds=seconds,
        )

    async def head(self, version_id: str) -> Head:
        """The head of a version, from memory or else from the store."""
        return await self._heads.get(version_id)

    async def prepare(self, policies: dict[str, Policy]) -> None:
        """Load the heads of classifier versions that serve or shadow and are not in memory
        (called by the policy refresh before the policies take effect), and start loading
        the encoder (in the background: a policy change does not wait for it)."""
        wanted = [
            p.student.version_id
            for p in policies.values()
            if p.student is not None and p.student.kind == "classifier" and p.mode != "off"
        ]
        if all(version in self._heads for version in wanted):
            return
        if self._warming is None:
            self._warming = asyncio.get_running_loop().run_in_executor(None, self._warm)
        await self._heads.prepare(wanted)

    @property
    def loaded(self) -> list[str]:
        """Version ids of the heads in memory, least recently used first."""
        return self._heads.loaded

    def _warm(self) -> None:
        try:
            self.encoder.encode(["load the model"])
        except Exception as exc:  # the first request will load it, or say why not
            log.warning("could not load the encoder of classifier students: %s", exc)
            return
        # The model's objects live as long as the proxy: keep the collector's full passes
        # from walking them (see proxy.processes.heap).
        gc.collect()
        gc.freeze()

    def _decode(self, version_id: str, data: bytes) -> Head | None:
        head = Head.from_bytes(data)
        if head.encoder != self.encoder_name:
            log.warning(
                "version %s's head was trained on %s embeddings; this proxy embeds with "
                "%s (set STILLROOM_EMBEDDING_MODEL alike): it will not serve",
                version_id,
                head.encoder,
                self.encoder_name,
            )
            return None
        return head


def completion(prediction: Prediction, payload: dict[str, Any]) -> dict[str, Any]:
    """The answer as a ``chat.completion``: one choice whose content is the label's answer
    string; its log-probability (and the next likeliest labels', up to ``top_logprobs``)
    as a single token covering the whole answer."""
    answer = prediction.answer
    top = int(payload.get("top_logprobs") or 0)
    alternatives = [
        TopLogprob.of(text, _finite(logprob)) for text, logprob in prediction.ranked[:top]
    ]
    token = TokenLogprob.of(answer, prediction.logprob, alternatives)
    prompt_tokens = math.ceil(prompt_chars(payload) / CHARS_PER_TOKEN)
    completion_tokens = max(1, math.ceil(len(answer) / CHARS_PER_TOKEN))
    return ChatCompletion.from_text(
        answer,
        model="classifier",
        logprobs=ChoiceLogprobs(content=[token]),
        usage=Usage.of(prompt_tokens, completion_tokens),
    ).model_dump(mode="json")


def _finite(logprob: float) -> float:
    """JSON has no -inf: a vanishing probability is reported as OpenAI does, -9999."""
    return logprob if np.isfinite(logprob) else -9999.0
