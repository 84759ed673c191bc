"""The difficulty gate: an input whose nearest past inputs the student got wrong goes
straight to the teacher, without asking the student.

Past inputs with known agreement come from the version's held-out evaluation and from its
shadow and audit pairs. Each version's index (MiniLM embeddings in faiss) is built in the
background on first use and rebuilt as scored pairs accumulate; until it is ready, the gate
lets requests through.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.embedding import Encoder
from core.evaluation import read_evaluation
from core.profile import prompt_key
from core.tables import Exchange, ShadowResult, StudentVersion

log = logging.getLogger("stillroom.router")

_SCORED_LIMIT = 5000
_REBUILD_SECONDS = 300.0
_MIN_KNOWN = 10


@dataclass(frozen=True, slots=True)
class _Index:
    faiss_index: Any
    agrees: np.ndarray[Any, np.dtype[np.float32]]


class DifficultyGate:
    def __init__(
        self,
        *,
        engine: Engine,
        encoder: Encoder,
        neighbours: int = 5,
        min_agreement: float = 0.5,
    ) -> None:
        self.engine = engine
        self.encoder = encoder
        self.neighbours = neighbours
        self.min_agreement = min_agreement
        self._indexes: dict[str, _Index] = {}
        self._attempted: dict[str, float] = {}  # version: when its index was last (re)built
        self._building: set[str] = set()
        self._lock = threading.Lock()

    def ready(self, version_id: str) -> bool:
        return self._indexes.get(version_id) is not None

    def is_difficult(
        self,
        version_id: str,
        messages: list[dict[str, Any]],
        *,
        vector: np.ndarray[Any, np.dtype[np.float32]] | None = None,
    ) -> bool:
        """True when the nearest known inputs mostly disagreed. Blocking (embeds the
        input, unless its prompt-key ``vector`` is given): call it from a worker thread."""
        index = self._indexes.get(version_id)
        now = time.monotonic()
        if now - self._attempted.get(version_id, -_REBUILD_SECONDS) >= _REBUILD_SECONDS:
            self._attempted[version_id] = now
            self._build_in_background(version_id)
        if index is None:
            return False
        if vector is None:
            vector = self.encoder.encode([prompt_key(messages)])[0]
        k = min(self.neighbours, index.faiss_index.ntotal)
        row = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        _, found = index.faiss_index.search(row, k)
        agreement = float(np.mean(index.agrees[found[0]]))
        return agreement < self.min_agreement

    def _build_in_background(self, version_id: str) -> None:
        with self._lock:
            if version_id in self._building:
                return
            self._building.add(version_id)
        threading.Thread(
            target=self._build, args=(version_id,), name="stillroom-difficulty", daemon=True
        ).start()

    def _build(self, version_id: str) -> None:
        try:
            known = self._known(version_id)
            if len(known) < _MIN_KNOWN:
                return
            import faiss

            vectors = np.ascontiguousarray(self.encoder.encode([text for text, _ in known]))
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(vectors)
            agrees = np.array([1.0 if ok else 0.0 for _, ok in known], dtype=np.float32)
            self._indexes[version_id] = _Index(index, agrees)
        except Exception:
            log.exception("building the difficulty index of version %s failed", version_id)
        finally:
            with self._lock:
                self._building.discard(version_id)

    def _known(self, version_id: str) -> list[tuple[str, bool]]:
        """(input, agreed) pairs: held-out evaluation, then shadow and audit results."""
        with Session(self.engine) as session:
            version = session.get(StudentVersion, version_id)
            if version is None:
                return []
            heldout = dict(read_evaluation(version).heldout)
            known = []
            if heldout:
                rows = session.exec(
                    select(Exchange.id, Exchange.request).where(col(Exchange.id).in_(list(heldout)))
                ).all()
                known += [(prompt_key(r.get("messages") or []), heldout[i]) for i, r in rows]
            scored = session.exec(
                select(ShadowResult.input_text, ShadowResult.agrees)
                .where(
                    ShadowResult.version_id == version_id,
                    col(ShadowResult.input_text).is_not(None),
                )
                .order_by(col(ShadowResult.created_at).desc())
                .limit(_SCORED_LIMIT)
            ).all()
            known += [(text, bool(ok)) for text, ok in scored if text]
        return known
