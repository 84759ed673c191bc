"""An extractor student: what the distiller trains and the router answers with.

The model is the bundled MiniLM encoder fine-tuned for one task (its own copy: the encoder
the proxy shares between classifier heads, the difficulty gate and scoring stays frozen),
with two kinds of head on top:

- a token-tagging head for the ``span`` fields: one tag per word (on its first wordpiece),
  outside or inside a field (a field has one value, so a run of words tagged with it is its
  value); a field's value is the input's own characters under its tagged words
  (mapped back through the tokenizer's offsets), so a value is always copied verbatim and
  never made up;
- a classification head per ``label`` field, over its values (absence is one of them),
  on the mean of the token states.

Its confidence is the calibrated log-probability of the whole answer: the sum, over every
token, of the log-probability of its tag, plus each label head's of its value (each head
divided by a temperature fitted on training pairs it did not learn from).

Only the layers it fine-tunes are stored (half precision; the embeddings and lower layers
are the bundled encoder's), with the heads and the teacher's layout, as one blob: in the
store, so every proxy replica can load it, and beside the adapters.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

from core.answer_layout import ABSENT, Layout, Path

if TYPE_CHECKING:
    import torch

FORMAT = "stillroom-extractor/1"
MAX_TOKENS = 128


def source_text(messages: Sequence[dict[str, Any]]) -> str:
    """The turns a task varies on (every non-system turn's text), as the extractor reads
    them and copies values from."""
    parts = []
    for message in messages:
        if message.get("role") in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if isinstance(content, str) and content:
            parts.append(content)
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class LabelField:
    path: Path
    values: tuple[str, ...]  # the JSON of each value; "" stands for absent


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """The fields an extractor decides, and the values it writes without deciding."""

    spans: tuple[Path, ...]
    labels: tuple[LabelField, ...]
    constants: tuple[tuple[Path, str], ...]  # (path, JSON of the value)

    @property
    def tags(self) -> int:
        return 1 + len(self.spans)

    def document(self) -> dict[str, Any]:
        return {
            "spans": [list(p) for p in self.spans],
            "labels": [[list(f.path), list(f.values)] for f in self.labels],
            "constants": [[list(p), v] for p, v in self.constants],
        }

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> FieldSpec:
        return cls(
            spans=tuple(tuple(p) for p in data["spans"]),
            labels=tuple(LabelField(tuple(p), tuple(v)) for p, v in data["labels"]),
            constants=tuple((tuple(p), v) for p, v in data["constants"]),
        )


@dataclass(frozen=True, slots=True)
class Extraction:
    answer: str  # the rebuilt answer text (content, or a call's arguments)
    values: dict[Path, Any]
    logprob: float


def build_network(spec: FieldSpec, encoder_path: str) -> torch.nn.Module:
    """The encoder and the heads, untrained (the encoder as bundled)."""
    import torch
    from transformers import AutoModel

    class Network(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(encoder_path, local_files_only=True)
            hidden = int(self.encoder.config.hidden_size)
            self.tagger = torch.nn.Linear(hidden + SHAPE_FEATURES, spec.tags)
            self.labels = torch.nn.ModuleList(
                torch.nn.Linear(hidden, len(f.values)) for f in spec.labels
            )

        def forward(
            self, ids: torch.Tensor, mask: torch.Tensor, shapes: torch.Tensor
        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
            states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            tagged = self.tagger(torch.cat([states, shapes.to(states.dtype)], dim=-1))
            return tagged, [head(pooled) for head in self.labels]

    return Network()


def trained_parameters(network: torch.nn.Module, frozen_layers: int) -> list[str]:
    """Names of the parameters an extractor fine-tunes (and stores): every layer of the
    encoder above the first ``frozen_layers``, and the heads."""
    names = []
    for name, _ in network.named_parameters():
        if name.startswith("encoder.embeddings."):
            continue
        layer = name.startswith("encoder.encoder.layer.")
        if layer and int(name.split(".")[3]) < frozen_layers:
            continue
        names.append(name)
    return names


SHAPE_FEATURES = 3


def _shape(piece: str) -> list[float]:
    """Capitalised, all capitals, has a digit."""
    return [
        float(piece[:1].isupper()),
        float(len(piece) > 1 and piece.isupper()),
        float(any(c.isdigit() for c in piece)),
    ]


@dataclass(slots=True)
class _Run:
    """Consecutive words tagged with one span field: a candidate value of it."""

    field: int
    start: int
    end: int
    logprobs: list[float]

    @property
    def certainty(self) -> float:
        return sum(self.logprobs) / len(self.logprobs)


def word_starts(word_ids: Sequence[int | None]) -> list[bool | None]:
    """Per token: True for the first wordpiece of a word (the tokens that are tagged),
    False for the rest of it, None for special tokens and padding."""
    starts: list[bool | None] = []
    previous: int | None = None
    for word in word_ids:
        starts.append(None if word is None else word != previous)
        previous = word
    return starts


class Extractor:
    """A trained extractor: tokenizer, network, field spec, temperatures and layout."""

    def __init__(
        self,
        *,
        network: torch.nn.Module,
        tokenizer: Any,
        spec: FieldSpec,
        layout: Layout,
        encoder: str,
        frozen_layers: int,
        temperatures: tuple[float, ...] | None = None,
    ) -> None:
        self.network = network.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.layout = layout
        self.encoder = encoder
        self.frozen_layers = frozen_layers
        # One for the tagger, then one per label head.
        self.temperatures = temperatures or (1.0,) * (1 + len(spec.labels))

    def tokenize(self, texts: Sequence[str]) -> Any:
        """The texts as the network reads them, with each token's character offsets and
        the shape of its text (the encoder's vocabulary is lowercase: capitals and digits,
        strong signs of names, numbers and dates, would be lost)."""
        import torch

        batch = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=MAX_TOKENS,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = batch["offset_mapping"].tolist()
        batch["shapes"] = torch.tensor(
            [
                [_shape(text[begin:end]) for begin, end in row]
                for text, row in zip(texts, offsets, strict=True)
            ],
            dtype=torch.float32,
        )
        return batch

    def forward(self, batch: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tag logits (batch, tokens, tags) and each label head's logits (batch, values)."""
        result: tuple[torch.Tensor, list[torch.Tensor]] = self.network(
            batch["input_ids"], batch["attention_mask"], batch["shapes"]
        )
        return result

    def logits(self, texts: Sequence[str]) -> tuple[Any, torch.Tensor, list[torch.Tensor]]:
        import torch

        batch = self.tokenize(texts)
        with torch.inference_mode():
            tags, labels = self.forward(batch)
        return batch, tags, labels

    def extract(self, texts: Sequence[str]) -> list[Extraction]:
        """The answer to each input text (see :func:`source_text`)."""
        batch, tags, labels = self.logits(texts)
        return [
            self._decode(
                text,
                batch["offset_mapping"][row].tolist(),
                word_starts(batch.word_ids(row)),
                tags[row],
                [head[row] for head in labels],
            )
            for row, text in enumerate(texts)
        ]

    def _decode(
        self,
        text: str,
        offsets: list[list[int]],
        starts: list[bool | None],
        tags: torch.Tensor,
        labels: list[torch.Tensor],
    ) -> Extraction:
        import torch

        tag_logprobs = torch.log_softmax(tags.double() / self.temperatures[0], dim=-1)
        best = tag_logprobs.max(dim=-1)
        chosen = best.indices.tolist()
        logprob = 0.0
        runs: list[_Run] = []
        current: _Run | None = None
        for index, (begin, finish) in enumerate(offsets):
            if starts[index] is None:
                continue  # padding and [CLS]/[SEP]: no tag
            if not starts[index]:  # the rest of a word goes with its first wordpiece
                if current is not None:
                    current.end = finish
                continue
            value = float(best.values[index])
            logprob += value
            field = chosen[index] - 1
            if field < 0:
                current = None
            elif current is not None and current.field == field:
                current.end = finish
                current.logprobs.append(value)
            else:
                current = _Run(field, begin, finish, [value])
                runs.append(current)
        values: dict[Path, Any] = {}
        positions: dict[Path, int] = {}
        # A field tagged in several places takes the run its tags are surest of.
        surest: dict[int, _Run] = {}
        for run in runs:
            if run.field not in surest or run.certainty > surest[run.field].certainty:
                surest[run.field] = run
        for field, run in surest.items():
            values[self.spec.spans[field]] = text[run.start : run.end]
            positions[self.spec.spans[field]] = run.start
        for number, (label, head) in enumerate(zip(self.spec.labels, labels, strict=True)):
            scaled = torch.log_softmax(head.double() / self.temperatures[1 + number], dim=-1)
            pick = int(scaled.argmax())
            logprob += float(scaled[pick])
            encoded = label.values[pick]
            values[label.path] = json.loads(encoded) if encoded else ABSENT
        for path, encoded in self.spec.constants:
            values[path] = json.loads(encoded)
        answer = self.layout.render(values, positions)
        return Extraction(answer, values, logprob if math.isfinite(logprob) else -math.inf)

    def to_bytes(self) -> bytes:
        import torch
        from safetensors.torch import save

        state = dict(self.network.named_parameters())
        kept = {
            name: state[name].detach().to(torch.float16).contiguous()
            for name in trained_parameters(self.network, self.frozen_layers)
        }
        meta = {
            "format": FORMAT,
            "spec": self.spec.document(),
            "layout": self.layout.document(),
            "encoder": self.encoder,
            "frozen_layers": self.frozen_layers,
            "temperatures": list(self.temperatures),
        }
        buffer = io.BytesIO()
        header = json.dumps(meta).encode()
        buffer.write(len(header).to_bytes(8, "big"))
        buffer.write(header)
        buffer.write(save(kept))
        return buffer.getvalue()

    @staticmethod
    def read_meta(data: bytes) -> dict[str, Any]:
        """The blob's description (format, fields, layout, encoder); ValueError when it is
        not an extractor's."""
        size = int.from_bytes(data[:8], "big") if len(data) >= 8 else -1
        try:
            meta: dict[str, Any] = json.loads(data[8 : 8 + size].decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not an extractor: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"not an extractor of format {FORMAT}")
        return meta

    @classmethod
    def from_bytes(cls, data: bytes, *, encoder_path: str) -> Extractor:
        """An extractor from its blob, on the bundled encoder at ``encoder_path``."""
        import torch
        from safetensors.torch import load
        from transformers import AutoTokenizer

        meta = cls.read_meta(data)
        size = int.from_bytes(data[:8], "big")
        spec = FieldSpec.from_document(meta["spec"])
        network = build_network(spec, encoder_path)
        weights = {k: v.to(torch.float32) for k, v in load(data[8 + size :]).items()}
        missing = set(trained_parameters(network, int(meta["frozen_layers"]))) - set(weights)
        if missing:
            raise ValueError(f"extractor blob lacks {sorted(missing)[:3]}")
        network.load_state_dict(weights, strict=False)
        return cls(
            network=network,
            tokenizer=AutoTokenizer.from_pretrained(encoder_path, local_files_only=True),
            spec=spec,
            layout=Layout.from_document(meta["layout"]),
            encoder=str(meta["encoder"]),
            frozen_layers=int(meta["frozen_layers"]),
            temperatures=tuple(float(t) for t in meta["temperatures"]),
        )

    def save(self, path: FilePath) -> FilePath:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes())
        return path
