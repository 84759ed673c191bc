"""Extractor students, answered inside the proxy: no hop to a student server.

A version's fine-tuned encoder and heads read the request's varying turns, copy each span
field's value out of them, pick each label field's value, and the answer is rebuilt in
the teacher's layout: as the message content, or as a call of the teacher's one function
(``tool_calls``, ``finish_reason: tool_calls``, a fresh call id). The forward pass runs in
a worker thread, never on the event loop.

Models are read from the store (every replica can) and kept in a small LRU keyed by
version id (:class:`router.stored_models.StoredModels`), as classifier heads are.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from typing import Any

from sqlalchemy.engine import Engine

from core.extractor import Extraction, Extractor, source_text
from core.profile import prompt_chars
from core.wire import AssistantMessage, ChatCompletion, FunctionCall, ToolCall, Usage
from router.policy import Policy, StudentRef
from router.stored_models import StoredModels
from router.student import StudentReply

log = logging.getLogger("stillroom.router")

CHARS_PER_TOKEN = 4  # usage is estimated, as for a classifier


class ExtractorStudent:
    """A :class:`router.student.Student` for ``extractor`` versions."""

    def __init__(
        self, *, engine: Engine, encoder_path: str, encoder_name: str, max_models: int = 8
    ) -> None:
        self.encoder_path = encoder_path
        self.encoder_name = encoder_name
        self._models = StoredModels(
            engine=engine, decode=self._decode, what="extractor", max_models=max_models
        )
        self._lock = threading.Lock()  # one forward pass at a time per process

    async def answer(self, student: StudentRef, payload: dict[str, Any], **_: Any) -> StudentReply:
        model = await self.model(student.version_id)
        text = source_text(payload.get("messages") or [])
        began = time.perf_counter()
        extraction = await asyncio.to_thread(self._extract, model, text)
        seconds = time.perf_counter() - began
        return StudentReply(
            completion=completion(extraction, model, payload),
            text=extraction.answer,
            confidence=extraction.logprob,
            seconds=seconds,
        )

    def _extract(self, model: Extractor, text: str) -> Extraction:
        with self._lock:
            return model.extract([text])[0]

    async def model(self, version_id: str) -> Extractor:
        """The model of a version, from memory or else from the store."""
        return await self._models.get(version_id)

    async def prepare(self, policies: dict[str, Policy]) -> None:
        """Load the models of extractor versions that serve or shadow and are not in memory
        (called by the policy refresh before the policies take effect)."""
        wanted = [
            p.student.version_id
            for p in policies.values()
            if p.student is not None and p.student.kind == "extractor" and p.mode != "off"
        ]
        await self._models.prepare(wanted)

    @property
    def loaded(self) -> list[str]:
        return self._models.loaded

    def _decode(self, version_id: str, data: bytes) -> Extractor | None:
        meta = Extractor.read_meta(data)
        if meta["encoder"] != self.encoder_name:
            log.warning(
                "version %s's extractor was fine-tuned from %s; this proxy has %s (set "
                "STILLROOM_EMBEDDING_MODEL alike): it will not serve",
                version_id,
                meta["encoder"],
                self.encoder_name,
            )
            return None
        return Extractor.from_bytes(data, encoder_path=self.encoder_path)


def completion(extraction: Extraction, model: Extractor, payload: dict[str, Any]) -> dict[str, Any]:
    """The answer as a ``chat.completion``: its document as the content, or as the
    arguments of a call of the teacher's function."""
    prompt_tokens = math.ceil(prompt_chars(payload) / CHARS_PER_TOKEN)
    usage = Usage.of(prompt_tokens, max(1, math.ceil(len(extraction.answer) / CHARS_PER_TOKEN)))
    function = model.layout.function
    if function is None:
        answer = ChatCompletion.from_text(extraction.answer, model="extractor", usage=usage)
        return answer.model_dump(mode="json")
    answer = ChatCompletion.from_text(
        "", model="extractor", finish_reason="tool_calls", usage=usage
    )
    message = AssistantMessage(content=None, annotations=[])
    message.tool_calls = [
        ToolCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            function=FunctionCall(name=function, arguments=extraction.answer),
        )
    ]
    answer.choices[0].message = message
    return answer.model_dump(mode="json")
