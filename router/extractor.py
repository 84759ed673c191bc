"""Extractor students, answered inside the proxy: no hop to a student server.

A version's fine-tuned encoder and heads read the request's varying turns, copy each span
field's value out of them, pick each label field's value, and the answer is rebuilt in
the teacher's layout: as the message content, or as a call of the teacher's one function
(``tool_calls``, ``finish_reason: tool_calls``, a fresh call id). The forward pass runs in
a worker thread, never on the event loop.

Models are read from the store (every replica can) and kept in a small LRU keyed by
version id; the policy refresh loads a newly published version's before the policy naming
it takes effect, as for classifier heads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.extractor import Extraction, Extractor, source_text
from core.profile import prompt_chars
from core.tables import StudentHead
from core.wire import AssistantMessage, ChatCompletion, FunctionCall, ToolCall, Usage
from router.policy import Policy, StudentRef
from router.student import StudentReply, StudentUnavailable

log = logging.getLogger("stillroom.router")

CHARS_PER_TOKEN = 4  # usage is estimated, as for a classifier


class ExtractorStudent:
    """A :class:`router.student.Student` for ``extractor`` versions."""

    def __init__(
        self, *, engine: Engine, encoder_path: str, encoder_name: str, max_models: int = 8
    ) -> None:
        self.engine = engine
        self.encoder_path = encoder_path
        self.encoder_name = encoder_name
        self.max_models = max_models
        self._models: OrderedDict[str, Extractor] = OrderedDict()
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
        model = self._models.get(version_id)
        if model is None:
            loaded = await asyncio.to_thread(self._load, [version_id])
            model = loaded.get(version_id)
            if model is None:
                raise StudentUnavailable(f"no extractor for version {version_id}")
            self._keep(version_id, model)
        else:
            self._models.move_to_end(version_id)
        return model

    async def prepare(self, policies: dict[str, Policy]) -> None:
        """Load the models of extractor versions that serve or shadow and are not in memory
        (called by the policy refresh before the policies take effect)."""
        wanted = [
            p.student.version_id
            for p in policies.values()
            if p.student is not None and p.student.kind == "extractor" and p.mode != "off"
        ]
        missing = [version for version in wanted if version not in self._models]
        if not missing:
            return
        try:
            loaded = await asyncio.to_thread(self._load, missing)
        except Exception as exc:  # the request path retries; the teacher answers meanwhile
            log.warning("could not load extractors %s: %s", missing, exc)
            return
        for version_id in missing:
            if version_id in loaded:
                self._keep(version_id, loaded[version_id])

    @property
    def loaded(self) -> list[str]:
        return list(self._models)

    def _keep(self, version_id: str, model: Extractor) -> None:
        self._models[version_id] = model
        self._models.move_to_end(version_id)
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)

    def _load(self, version_ids: list[str]) -> dict[str, Extractor]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(StudentHead).where(col(StudentHead.version_id).in_(version_ids))
            ).all()
            stored = {row.version_id: row.data for row in rows}
        models = {}
        for version_id, data in stored.items():
            meta = Extractor.read_meta(data)
            if meta["encoder"] != self.encoder_name:
                log.warning(
                    "version %s's extractor was fine-tuned from %s; this proxy has %s (set "
                    "STILLROOM_EMBEDDING_MODEL alike): it will not serve",
                    version_id,
                    meta["encoder"],
                    self.encoder_name,
                )
                continue
            models[version_id] = Extractor.from_bytes(data, encoder_path=self.encoder_path)
        return models


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
