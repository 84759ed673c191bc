"""Student models kept in the store (``student_heads``), loaded into a bounded LRU.

Classifier heads and extractors answer inside the proxy from bytes every replica can read.
Versions never change, so a version id is a stable key: the policy refresh loads a newly
published version's model before the policy naming it takes effect, and requests switch
from one model to the next atomically with the policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.tables import StudentHead
from router.student import StudentUnavailable

log = logging.getLogger("stillroom.router")

Model = TypeVar("Model")

# A stored model's bytes, read into a model: None when this proxy cannot serve it (say why
# in the log).
Decode = Callable[[str, bytes], "Model | None"]


class StoredModels(Generic[Model]):
    """The models of ``what`` versions (e.g. "classifier head"), least recently used first."""

    def __init__(
        self, *, engine: Engine, decode: Decode[Model], what: str, max_models: int
    ) -> None:
        self.engine = engine
        self.decode = decode
        self.what = what
        self.max_models = max_models
        self._models: OrderedDict[str, Model] = OrderedDict()

    @property
    def loaded(self) -> list[str]:
        """Version ids of the models in memory, least recently used first."""
        return list(self._models)

    def __contains__(self, version_id: object) -> bool:
        return version_id in self._models

    async def get(self, version_id: str) -> Model:
        """The model of a version, from memory or else from the store."""
        model = self._models.get(version_id)
        if model is None:
            loaded = await asyncio.to_thread(self._load, [version_id])
            model = loaded.get(version_id)
            if model is None:
                raise StudentUnavailable(f"no {self.what} for version {version_id}")
            self._keep(version_id, model)
        else:
            self._models.move_to_end(version_id)
        return model

    async def prepare(self, version_ids: Iterable[str]) -> None:
        """Load the models of these versions that are not in memory (a failure is logged:
        the request path retries, and the teacher answers meanwhile)."""
        missing = [version for version in version_ids if version not in self._models]
        if not missing:
            return
        try:
            loaded = await asyncio.to_thread(self._load, missing)
        except Exception as exc:
            log.warning("could not load %ss %s: %s", self.what, missing, exc)
            return
        for version_id in missing:
            if version_id in loaded:
                self._keep(version_id, loaded[version_id])

    def _keep(self, version_id: str, model: Model) -> None:
        self._models[version_id] = model
        self._models.move_to_end(version_id)
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)

    def _load(self, version_ids: list[str]) -> dict[str, Model]:
        with Session(self.engine) as session:
            rows = session.exec(
                select(StudentHead).where(col(StudentHead.version_id).in_(version_ids))
            ).all()
            stored = {row.version_id: row.data for row in rows}
        models = {}
        for version_id, data in stored.items():
            model = self.decode(version_id, data)
            if model is not None:
                models[version_id] = model
        return models
