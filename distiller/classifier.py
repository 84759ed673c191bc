"""Training a ``classifier`` student: a calibrated linear head on sentence embeddings.

For label-like tasks. Each curated pair's prompt key (the turns the task varies on) is
embedded with the shared encoder; a multinomial logistic regression (L2-regularised, fitted
with L-BFGS) maps the embedding to the teacher's label. Calibration never looks at the
held-out split (that one is for the publish gate): the training pairs are cut into folds
by hash, each fold is predicted by a head fitted on the others, and the temperature that
makes those out-of-fold predictions most likely is kept; the same out-of-fold inputs set
how far from every label's centroid an input may be and still count as familiar. The same
out-of-fold predictions, at that temperature and familiarity, are what the confidence
threshold is calibrated on together with the held-out split: every training pair is
predicted once by a head that never saw it, several times the evidence of the held-out
split alone, for the price of ``folds`` fits of a linear head (seconds).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.agreement import normalise_label
from core.classifier import Head
from distiller.curation import Example

if TYPE_CHECKING:
    from numpy.typing import NDArray

Embed = Callable[[Sequence[str]], "NDArray[np.float32]"]


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """How a classifier head is fitted."""

    l2: float = field(default=1e-3, metadata={"help": "L2 penalty on the weights (sum of squares)"})
    folds: int = field(default=5, metadata={"help": "folds of the training pairs for calibration"})
    max_iterations: int = field(default=300, metadata={"help": "L-BFGS iterations per fit"})
    familiar_quantile: float = field(
        default=0.005,
        metadata={
            "help": "share of (out-of-fold) training inputs allowed below the familiarity "
            "floor: inputs further from every label than that are unlike the training set"
        },
    )


@dataclass(frozen=True, slots=True)
class ClassifierResult:
    head: Head
    seconds: float  # embedding and fitting
    examples: int
    labels: int
    out_of_fold: list[tuple[float, bool]] = field(default_factory=list)
    """(confidence, agrees with the teacher) per training pair, from the head fitted
    without its fold: a calibrated log-probability, ``-inf`` for an unfamiliar input."""


def label_answers(examples: Sequence[Example]) -> tuple[list[str], list[int]]:
    """The label set as the teacher's answer strings (the most frequent spelling of each
    normalised label), and each example's label index."""
    spellings: dict[str, Counter[str]] = {}
    for example in examples:
        spellings.setdefault(normalise_label(example.answer), Counter())[example.answer] += 1
    names = sorted(spellings)
    answers = [spellings[name].most_common(1)[0][0] for name in names]
    position = {name: index for index, name in enumerate(names)}
    return answers, [position[normalise_label(e.answer)] for e in examples]


def train_classifier(
    examples: Sequence[Example],
    *,
    embed: Embed,
    encoder: str,
    config: ClassifierConfig | None = None,
) -> ClassifierResult:
    """Fit and calibrate a head on ``examples`` (the training split only)."""
    config = config or ClassifierConfig()
    started = time.perf_counter()
    answers, labels = label_answers(examples)
    if len(answers) < 2:
        raise ValueError("a classifier needs at least two distinct teacher answers")
    vectors = np.ascontiguousarray(embed([e.prompt_key for e in examples]), dtype=np.float32)
    targets = np.asarray(labels, dtype=np.int64)
    folds = np.array([_fold(e.prompt_key, config.folds) for e in examples])
    out_of_fold = np.zeros((len(examples), len(answers)), dtype=np.float32)
    similarity = np.zeros(len(examples), dtype=np.float32)
    predicted = np.zeros(len(examples), dtype=bool)
    for fold in range(config.folds):
        held = folds == fold
        if not held.any() or held.all():
            continue
        predicted |= held
        weights, bias = fit_logistic(vectors[~held], targets[~held], len(answers), config)
        out_of_fold[held] = vectors[held] @ weights + bias
        centroids = _centroids(vectors[~held], targets[~held], len(answers))
        similarity[held] = (vectors[held] @ centroids.T).max(axis=1)
    temperature = fit_temperature(out_of_fold, targets)
    min_similarity = float(np.quantile(similarity, config.familiar_quantile))
    weights, bias = fit_logistic(vectors, targets, len(answers), config)
    head = Head(
        answers=tuple(answers),
        weights=weights,
        bias=bias,
        temperature=temperature,
        centroids=_centroids(vectors, targets, len(answers)),
        min_similarity=min_similarity,
        encoder=encoder,
    )
    return ClassifierResult(
        head=head,
        seconds=time.perf_counter() - started,
        examples=len(examples),
        labels=len(answers),
        out_of_fold=out_of_fold_results(
            out_of_fold[predicted] / temperature,
            targets[predicted],
            similarity[predicted] >= min_similarity,
        ),
    )


def out_of_fold_results(
    logits: NDArray[np.float32], targets: NDArray[np.int64], familiar: NDArray[np.bool_]
) -> list[tuple[float, bool]]:
    """(confidence, agrees) per row, as the router would score it: the log-probability of
    the likeliest label, ``-inf`` for an unfamiliar input (it would not be answered)."""
    wide = logits.astype(np.float64)
    shifted = wide - wide.max(axis=1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    chosen = logprobs.argmax(axis=1)
    best = logprobs[np.arange(len(chosen)), chosen]
    return [
        (float(value) if known else -math.inf, bool(label == truth))
        for value, known, label, truth in zip(best, familiar, chosen, targets, strict=True)
    ]


def fit_logistic(
    vectors: NDArray[np.float32], targets: NDArray[np.int64], labels: int, config: ClassifierConfig
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Multinomial logistic regression: weights (dimension, labels) and bias (labels,)."""
    import torch

    inputs = torch.from_numpy(vectors)
    truth = torch.from_numpy(targets)
    weights = torch.zeros(vectors.shape[1], labels, requires_grad=True)
    bias = torch.zeros(labels, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=config.max_iterations, line_search_fn="strong_wolfe"
    )

    def loss() -> float:
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(inputs @ weights + bias, truth)
        value = value + config.l2 * (weights**2).sum()
        torch.autograd.backward(value)
        return float(value.detach())

    optimiser.step(loss)  # type: ignore[no-untyped-call]
    return (
        weights.detach().numpy().astype(np.float32),
        bias.detach().numpy().astype(np.float32),
    )


def fit_temperature(logits: NDArray[np.float32], targets: NDArray[np.int64]) -> float:
    """The temperature minimising the negative log-likelihood of ``logits`` (golden-section
    search over log T in [1/20, 20])."""

    def nll(log_t: float) -> float:
        scaled = logits / math.exp(log_t)
        shifted = scaled - scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=1))
        return float((log_norm - shifted[np.arange(len(targets)), targets]).mean())

    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


def _centroids(
    vectors: NDArray[np.float32], targets: NDArray[np.int64], labels: int
) -> NDArray[np.float32]:
    centroids = np.zeros((labels, vectors.shape[1]), dtype=np.float32)
    np.add.at(centroids, targets, vectors)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    result: NDArray[np.float32] = (centroids / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return result


def _fold(key: str, folds: int) -> int:
    return int.from_bytes(hashlib.sha256(b"fold:" + key.encode()).digest()[:4], "big") % folds


def majority_answer(examples: Sequence[Example]) -> str:
    """The floor a classifier must beat: always the most frequent teacher answer."""
    answers, labels = label_answers(examples)
    return answers[Counter(labels).most_common(1)[0][0]]
