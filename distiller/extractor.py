"""Training an ``extractor`` student: MiniLM fine-tuned to tag the input's copied values
and to pick each closed-set field's value.

For extractor-shaped JSON tasks (see ``distiller.fields``). Each curated pair becomes the
input's text (its varying turns), the character range of every span field's value in it
(its first verbatim occurrence) and every label field's value. The encoder's embeddings
and lower layers stay as bundled; its upper layers and the heads are trained together
(AdamW, cross-entropy of the tags and of each label). A slice of the training split (by
hash) is kept out of training to fit the temperatures, so the held-out split stays the
gate's alone, as for a classifier.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.answer_layout import answer_document
from core.extractor import (
    Extractor,
    FieldSpec,
    LabelField,
    build_network,
    source_text,
    word_starts,
)
from core.extractor import trained_parameters as stored_parameters
from distiller.classifier import fit_temperature
from distiller.curation import Example
from distiller.fields import FieldReading, value_at
from distiller.training import TrainingProgress

if TYPE_CHECKING:
    import torch

IGNORED = -100


@dataclass(frozen=True, slots=True)
class ExtractorConfig:
    """How an extractor is fine-tuned."""

    epochs: int = field(default=6, metadata={"help": "passes over the training pairs"})
    batch_size: int = field(default=16, metadata={"help": "pairs per optimizer step"})
    min_steps: int = field(
        default=100,
        metadata={"help": "at least this many steps: a small set gets more epochs (up to 30)"},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW, encoder layers"})
    head_learning_rate: float = field(default=3e-3, metadata={"help": "AdamW, the heads"})
    frozen_layers: int = field(
        default=2, metadata={"help": "lower encoder layers kept as bundled (not stored)"}
    )
    calibration_percent: int = field(
        default=10, metadata={"help": "share of training pairs kept to fit temperatures"}
    )
    seed: int = 0


@dataclass
class ExtractorResult:
    extractor: Extractor
    seconds: float
    examples: int
    steps: int
    skipped: Counter[str]
    calibration: list[Example]  # training pairs kept out of training, to calibrate on


@dataclass(frozen=True, slots=True)
class _Target:
    text: str
    spans: list[tuple[int, int, int]]  # (span field, start, end) in characters
    labels: list[int]
    key: str


def field_spec(reading: FieldReading) -> FieldSpec:
    """The fields an extractor decides, from the task's field reading."""
    spans = tuple(f.path for f in reading.fields if f.kind == "span")
    labels = tuple(
        LabelField(f.path, (*f.values, "") if f.present < 1.0 else f.values)
        for f in reading.fields
        if f.kind == "label"
    )
    constants = tuple(
        (f.path, f.values[0]) for f in reading.fields if f.kind == "constant" and f.values
    )
    return FieldSpec(spans, labels, constants)


def targets(examples: Sequence[Example], spec: FieldSpec) -> tuple[list[_Target], Counter[str]]:
    """Each pair's training targets; pairs an extractor cannot learn from are counted."""
    kept: list[_Target] = []
    skipped: Counter[str] = Counter()
    for example in examples:
        parsed = answer_document(example.answer)
        if parsed is None:
            skipped["not_json"] += 1
            continue
        document, text = parsed[0], source_text(example.messages)
        target = _target(document, text, spec, example.prompt_key)
        if isinstance(target, str):
            skipped[target] += 1
        else:
            kept.append(target)
    return kept, skipped


def _target(document: dict[str, Any], text: str, spec: FieldSpec, key: str) -> _Target | str:
    spans = []
    for number, path in enumerate(spec.spans):
        value = value_at(document, path)
        if value in (None, ""):
            continue
        start = text.find(value) if isinstance(value, str) else -1
        if start < 0:
            return "value_not_in_input"
        spans.append((number, start, start + len(value)))
    labels = []
    for label in spec.labels:
        value = value_at(document, label.path)
        encoded = "" if value in (None, "", {}) else json.dumps(value, sort_keys=True)
        if encoded not in label.values:
            return "rare_label"
        labels.append(label.values.index(encoded))
    return _Target(text, spans, labels, key)


def train_extractor(
    examples: Sequence[Example],
    reading: FieldReading,
    *,
    encoder_path: str,
    encoder: str,
    config: ExtractorConfig | None = None,
    on_progress: Callable[[TrainingProgress], None] | None = None,
) -> ExtractorResult:
    """Fine-tune an extractor on ``examples`` (the training split only)."""
    import torch
    from transformers import AutoTokenizer

    config = config or ExtractorConfig()
    if reading.layout is None or not reading.extractor_shaped:
        raise ValueError(f"the task is not extractor-shaped: {reading.reason}")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    spec = field_spec(reading)
    rows, skipped = targets(examples, spec)
    calibration = [r for r in rows if _in_slice(r.key, config.calibration_percent)]
    training = [r for r in rows if not _in_slice(r.key, config.calibration_percent)]
    if len(calibration) < 20:  # too few to fit a temperature on: learn from them all
        training, calibration = rows, []
    kept_out = {r.key for r in calibration}
    if len(training) < 2:
        raise ValueError(f"an extractor needs training pairs ({dict(skipped)} left out)")
    network = build_network(spec, encoder_path)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path, local_files_only=True)
    extractor = Extractor(
        network=network,
        tokenizer=tokenizer,
        spec=spec,
        layout=reading.layout,
        encoder=encoder,
        frozen_layers=config.frozen_layers,
    )
    steps = _fit(extractor, training, config, on_progress, started)
    if calibration:
        extractor.temperatures = _temperatures(extractor, calibration)
    return ExtractorResult(
        extractor=extractor,
        seconds=time.perf_counter() - started,
        examples=len(training),
        steps=steps,
        skipped=skipped,
        calibration=[e for e in examples if e.prompt_key in kept_out],
    )


def _fit(
    extractor: Extractor,
    rows: list[_Target],
    config: ExtractorConfig,
    on_progress: Callable[[TrainingProgress], None] | None,
    started: float,
) -> int:
    import torch

    network = extractor.network
    trained = set(stored_parameters(network, config.frozen_layers))
    encoder_params: list[torch.nn.Parameter] = []
    head_params: list[torch.nn.Parameter] = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name in trained)
        if name in trained:
            (encoder_params if name.startswith("encoder.") else head_params).append(parameter)
    optimiser = torch.optim.AdamW(
        [
            {"params": encoder_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=0.01,
    )
    per_epoch = -(-len(rows) // config.batch_size)
    epochs = min(max(config.epochs, -(-config.min_steps // per_epoch)), max(config.epochs, 30))
    total = per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.0, 1.0 - step / total)
    )
    order = random.Random(config.seed)
    network.train()
    step = 0
    for epoch in range(epochs):
        shuffled = list(rows)
        order.shuffle(shuffled)
        for first in range(0, len(shuffled), config.batch_size):
            loss = _loss(extractor, shuffled[first : first + config.batch_size])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(encoder_params + head_params, 1.0)
            optimiser.step()
            scheduler.step()
            step += 1
            if on_progress is not None:
                elapsed = time.perf_counter() - started
                on_progress(
                    TrainingProgress(
                        step=step,
                        total_steps=total,
                        epoch=epoch + first / max(1, len(shuffled)),
                        loss=float(loss.detach()),
                        elapsed_seconds=elapsed,
                        eta_seconds=elapsed / step * (total - step),
                    )
                )
    network.eval()
    return step


def _batch(extractor: Extractor, rows: Sequence[_Target]) -> tuple[Any, torch.Tensor]:
    """The tokenized inputs, and the tag of each word's first wordpiece (the rest of a
    word, special tokens and padding are ``IGNORED``)."""
    import torch

    batch = extractor.tokenize([r.text for r in rows])
    offsets = batch["offset_mapping"].tolist()
    tags = torch.full(batch["input_ids"].shape, IGNORED, dtype=torch.long)
    for row, target in enumerate(rows):
        starts = word_starts(batch.word_ids(row))
        words = [(t, begin) for t, (begin, _) in enumerate(offsets[row]) if starts[t]]
        for token, _ in words:
            tags[row, token] = 0
        for field_number, start, stop in target.spans:
            for number, (token, begin) in enumerate(words):
                # A word is in the span when it starts before the span's end and the next
                # word starts after the span's start.
                follower = words[number + 1][1] if number + 1 < len(words) else len(target.text)
                if begin < stop and follower > start:
                    tags[row, token] = 1 + field_number
    return batch, tags


def _loss(extractor: Extractor, rows: Sequence[_Target]) -> torch.Tensor:
    import torch

    batch, tags = _batch(extractor, rows)
    tag_logits, label_logits = extractor.forward(batch)
    loss = torch.nn.functional.cross_entropy(
        tag_logits.reshape(-1, tag_logits.shape[-1]), tags.reshape(-1), ignore_index=IGNORED
    )
    for number, logits in enumerate(label_logits):
        truth = torch.tensor([r.labels[number] for r in rows], dtype=torch.long)
        loss = loss + torch.nn.functional.cross_entropy(logits, truth)
    return loss


def _temperatures(extractor: Extractor, rows: list[_Target]) -> tuple[float, ...]:
    """The temperature of each head that makes the calibration slice's answers likeliest."""
    import numpy as np
    import torch

    tag_rows, tag_truth = [], []
    label_rows: list[list[Any]] = [[] for _ in extractor.spec.labels]
    for first in range(0, len(rows), 32):
        chunk = rows[first : first + 32]
        batch, tags = _batch(extractor, chunk)
        with torch.inference_mode():
            tag_logits, label_logits = extractor.forward(batch)
        kept = tags != IGNORED
        tag_rows.append(tag_logits[kept].numpy())
        tag_truth.append(tags[kept].numpy())
        for number, logits in enumerate(label_logits):
            label_rows[number].append(logits.numpy())
    temperatures = [
        fit_temperature(np.concatenate(tag_rows).astype(np.float32), np.concatenate(tag_truth))
    ]
    for number, chunks in enumerate(label_rows):
        truth = np.array([r.labels[number] for r in rows], dtype=np.int64)
        temperatures.append(fit_temperature(np.concatenate(chunks).astype(np.float32), truth))
    return tuple(temperatures)


def _in_slice(key: str, percent: int) -> bool:
    digest = hashlib.sha256(b"calibration:" + key.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent
