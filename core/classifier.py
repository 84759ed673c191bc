"""A classifier student's head: what the distiller trains and the router answers with.

The student embeds the request's prompt key (its non-system turns, see
:func:`core.profile.prompt_key`) with the shared sentence encoder; the head turns that unit
vector into one probability per label: ``softmax((v · W + b) / T)``, with the temperature
``T`` fitted so that the probabilities are calibrated. Its answer is the teacher's own
answer string for the likeliest label.

A request is *familiar* when its embedding is at least ``min_similarity`` (cosine) from the
centroid of some label's training inputs; an unfamiliar one goes to the teacher whatever
the probabilities say.

Heads are stored as ``.npz`` bytes (no pickles), in the store (so that every proxy replica
can load them) and beside the distiller's other artefacts.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

FORMAT = "stillroom-classifier-head/1"
BUNDLED_ENCODER = "all-MiniLM-L6-v2 (bundled)"


def encoder_id(model: str | None) -> str:
    """How a head names the encoder it was trained on: the ``embedding_model`` setting, or
    the bundled MiniLM (whose folder differs from one installation to the next)."""
    return model or BUNDLED_ENCODER


@dataclass(frozen=True, slots=True)
class Prediction:
    answer: str  # the teacher's answer string for the label
    label: int
    probability: float
    logprob: float
    similarity: float  # cosine to the nearest label centroid
    familiar: bool
    ranked: list[tuple[str, float]]  # (answer, log-probability), likeliest first


@dataclass(frozen=True, slots=True)
class Head:
    answers: tuple[str, ...]
    weights: NDArray[np.float32]  # (dimension, labels)
    bias: NDArray[np.float32]  # (labels,)
    temperature: float
    centroids: NDArray[np.float32]  # (labels, dimension), unit rows
    min_similarity: float
    encoder: str

    @property
    def dimension(self) -> int:
        return int(self.weights.shape[0])

    def log_probabilities(self, vectors: NDArray[np.float32]) -> NDArray[np.float64]:
        """One row of calibrated log-probabilities per (unit) embedding row (in double
        precision: a probability near 1 keeps its distance from it)."""
        logits = (vectors.astype(np.float64) @ self.weights + self.bias) / self.temperature
        shifted = logits - logits.max(axis=1, keepdims=True)
        result: NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return result

    def similarities(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        """Cosine of each row to its nearest label centroid."""
        result: NDArray[np.float32] = (vectors @ self.centroids.T).max(axis=1)
        return result

    def predict(self, vector: NDArray[np.float32]) -> Prediction:
        """The head's answer to one embedding (a row or a flat vector)."""
        row = vector.reshape(1, -1)
        logprobs = self.log_probabilities(row)[0]
        label = int(np.argmax(logprobs))
        similarity = float(self.similarities(row)[0])
        order = np.argsort(-logprobs)
        return Prediction(
            answer=self.answers[label],
            label=label,
            probability=float(np.exp(logprobs[label])),
            logprob=float(logprobs[label]),
            similarity=similarity,
            familiar=similarity >= self.min_similarity,
            ranked=[(self.answers[i], float(logprobs[i])) for i in order],
        )

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "answers": list(self.answers),
            "temperature": self.temperature,
            "min_similarity": self.min_similarity,
            "encoder": self.encoder,
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            weights=self.weights.astype(np.float32),
            bias=self.bias.astype(np.float32),
            centroids=self.centroids.astype(np.float32),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Head:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta: dict[str, Any] = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format") != FORMAT:
                raise ValueError(f"not a classifier head of format {FORMAT}: {meta.get('format')}")
            return cls(
                answers=tuple(str(a) for a in meta["answers"]),
                weights=np.ascontiguousarray(arrays["weights"], dtype=np.float32),
                bias=np.ascontiguousarray(arrays["bias"], dtype=np.float32),
                temperature=float(meta["temperature"]),
                centroids=np.ascontiguousarray(arrays["centroids"], dtype=np.float32),
                min_similarity=float(meta["min_similarity"]),
                encoder=str(meta["encoder"]),
            )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path: Path) -> Head:
        return cls.from_bytes(path.read_bytes())
