"""The embedded student: one base causal LM in memory and many named LoRA adapters on it.

:class:`StudentModel` answers chat messages with the base model or one adapter (greedy or
sampled, with OpenAI-shaped token log-probabilities), streams answers piece by piece, and
scores a closed set of candidate answers in one batched pass. The model is shared, so every
use of it (generating, scoring, loading and unloading adapters) holds one lock: an adapter
is activated and used under that lock, and answers for different adapters never mix.
:meth:`~StudentModel.agenerate`, :meth:`~StudentModel.astream` and
:meth:`~StudentModel.in_worker` do the work on one worker thread, so an event loop never
blocks on the model.

The errors::

    StudentModelError
    ├── AdapterLoadError            the adapter could not be loaded (the model is unchanged)
    │   ├── AdapterMissingError     no adapter at that path
    │   └── AdapterExistsError      the name is taken and replacing was not asked for
    ├── AdapterNotFoundError        no adapter of that name is loaded (also a KeyError)
    ├── PromptError                 the messages cannot be rendered, or do not fit the context
    └── ResponseFormatError         the ``response_format`` cannot be followed (also a ValueError)

An answer asked for with a JSON ``response_format`` (``json_object``, or ``json_schema``
with its schema) is decoded held to it (``distiller.json_constraint``): it always parses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import threading
import warnings
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Required, TypedDict, TypeVar, Unpack

import torch

from distiller.base_model import load_causal_lm
from distiller.decoding import Decoder, Generation, StreamEvent
from distiller.json_constraint import ResponseFormatError as UnfollowableFormat
from distiller.json_constraint import grammar_for

_P = ParamSpec("_P")
_T = TypeVar("_T")

Message = dict[str, Any]


class StudentModelError(Exception):
    """Base of the errors :class:`StudentModel` raises."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AdapterLoadError(StudentModelError):
    """The adapter could not be loaded; the adapters already loaded are untouched."""


class AdapterMissingError(AdapterLoadError):
    """There is no adapter (no ``adapter_config.json``) at the given path."""


class AdapterExistsError(AdapterLoadError):
    """An adapter of that name is loaded and replacing it was not asked for."""


class AdapterNotFoundError(StudentModelError, KeyError):
    """No adapter of that name is loaded."""


class PromptError(StudentModelError, ValueError):
    """The messages cannot be rendered by the chat template, or do not fit the context."""


class ResponseFormatError(StudentModelError, ValueError):
    """The ``response_format`` is malformed, or its schema is not a JSON schema."""


class GenerateOptions(TypedDict, total=False):
    """How to answer: ``adapter`` (None: the base model) and ``max_new_tokens`` are
    required; ``temperature`` (default 0: greedy), ``top_logprobs`` (default 0) alternatives
    per token, ``stop`` strings, a sampling ``seed`` and the chat request's
    ``response_format`` (a JSON one holds the answer to it) are optional."""

    adapter: Required[str | None]
    max_new_tokens: Required[int]
    temperature: float
    top_logprobs: int
    stop: Sequence[str] | None
    seed: int | None
    response_format: Mapping[str, Any] | None


@dataclass(frozen=True)
class _Adapter:
    internal_name: str  # peft's name for it; unique, so a replacement loads beside the old
    path: str


class StudentModel:
    """One base causal LM (a Hugging Face id or a local directory, loaded without network
    access to the Hub for directories) in eval mode, with named LoRA adapters loaded by peft.
    ``device`` defaults to CUDA when there is one; ``dtype`` to float32 on a CPU and the
    checkpoint's own on a GPU.
    """

    def __init__(
        self, base_model: str | Path, *, device: str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        self.base_model = str(base_model)
        self._device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._dtype = dtype if dtype is not None or self._device != "cpu" else torch.float32
        model, tokenizer = load_causal_lm(self.base_model, device=self._device, dtype=self._dtype)
        self._model: Any = model
        self._tokenizer: Any = tokenizer
        self._peft: Any = None  # the PeftModel wrapping self._model, once an adapter loaded
        self._adapters: dict[str, _Adapter] = {}
        self._names = (f"adapter_{n}" for n in itertools.count(1))
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="student-model")
        eos = self._model.generation_config.eos_token_id
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self._eos_ids = frozenset(eos_ids)
        self._end_of_turn: int = tokenizer.eos_token_id or min(eos_ids)
        self.context_length: int = int(
            getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        )
        self._logits_width: int = int(model.config.vocab_size)

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (shared by every adapter)."""
        return self._tokenizer

    def close(self) -> None:
        """Stop the worker thread, after the work already queued on it."""
        self._executor.shutdown(wait=True)

    # Adapters

    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in loading order."""
        return list(self._adapters)

    def adapter_paths(self) -> dict[str, str]:
        """Each loaded adapter's name and the path it was loaded from, in loading order."""
        return {name: adapter.path for name, adapter in dict(self._adapters).items()}

    def load_adapter(self, name: str, path: str | Path, *, replace: bool = True) -> None:
        """Load the LoRA adapter at ``path`` as ``name``. An adapter already loaded under
        that name is replaced only once the new one has loaded (``replace=False`` refuses
        with :class:`AdapterExistsError` instead)."""
        if not name:
            raise AdapterLoadError("an adapter needs a non-empty name")
        if not (Path(path) / "adapter_config.json").is_file():
            raise AdapterMissingError(f"no LoRA adapter at {path}: no adapter_config.json there")
        with self._lock:
            if not replace and name in self._adapters:
                raise AdapterExistsError(f"a LoRA adapter named {name!r} is already loaded")
            internal = next(self._names)
            try:
                self._load_peft_adapter(internal, str(path))
            except Exception as exc:
                self._discard(internal)
                raise AdapterLoadError(
                    f"could not load LoRA adapter {name!r} from {path}: {exc}"
                ) from exc
            previous = self._adapters.get(name)
            self._adapters[name] = _Adapter(internal, str(path))
            if previous is not None:
                self._delete(previous.internal_name)

    def _load_peft_adapter(self, internal: str, path: str) -> None:
        from peft import PeftModel

        with warnings.catch_warnings():
            # peft asks transformers 5 for `is_gradient_checkpointing`, which warns that it
            # is deprecated (FutureWarning); nothing here checkpoints, and it is not ours.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._model, path, adapter_name=internal, is_trainable=False
                )
            else:
                self._peft.load_adapter(path, adapter_name=internal, is_trainable=False)
        self._peft.eval()

    def _discard(self, internal: str) -> None:
        """Undo what a failed load left behind."""
        if self._peft is None:
            # The first load failed after peft had begun wrapping the base model in place:
            # a fresh copy of the base is the only state known to be clean.
            self._model = load_causal_lm(self.base_model, device=self._device, dtype=self._dtype)[0]
        elif internal in self._peft.peft_config:
            self._delete(internal)

    def _delete(self, internal: str) -> None:
        with warnings.catch_warnings():
            # peft warns when the adapter it deletes was the active one and it picks another;
            # every use of the model activates its adapter itself, so the pick never matters.
            warnings.filterwarnings("ignore", message=".*was active which is now deleted.*")
            self._peft.delete_adapter(internal)

    def unload_adapter(self, name: str) -> None:
        """Unload the adapter ``name``; :class:`AdapterNotFoundError` if none is loaded."""
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                raise AdapterNotFoundError(f"no LoRA adapter named {name!r} is loaded")
            self._delete(adapter.internal_name)

    @contextlib.contextmanager
    def _activated(self, adapter: str | None) -> Iterator[None]:
        """The model answers with ``adapter`` (None: the base model) inside; lock held."""
        if adapter is None:
            if self._peft is None or not self._adapters:
                yield
            else:
                with self._peft.disable_adapter():
                    yield
            return
        if adapter not in self._adapters:
            raise AdapterNotFoundError(f"no LoRA adapter named {adapter!r} is loaded")
        self._peft.set_adapter(self._adapters[adapter].internal_name)
        yield

    # Answers

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The token ids of ``messages`` under the chat template, ready for an answer."""
        try:
            text = self._tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:
            raise PromptError(f"the chat template cannot render these messages: {exc}") from exc
        ids: list[int] = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context_length:
            raise PromptError(
                f"This model's maximum context length is {self.context_length} tokens. "
                f"However, your messages resulted in {len(ids)} tokens."
            )
        return ids

    def generate(
        self,
        messages: Sequence[Message],
        *,
        cancel: threading.Event | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generation:
        """Answer ``messages`` (see :class:`GenerateOptions`). The answer ends at the
        end-of-turn token or a ``stop`` string (finish reason "stop"), or after
        ``max_new_tokens`` or at the end of the context ("length")."""
        for event in self.generate_stream(messages, cancel=cancel, **options):
            if isinstance(event, Generation):
                return event
        raise AssertionError("a stream always ends with its Generation")

    def generate_stream(
        self,
        messages: Sequence[Message],
        *,
        cancel: threading.Event | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Iterator[StreamEvent]:
        """:meth:`generate`, yielding :class:`StreamPiece` s as text is decided and the
        :class:`Generation` last. The model stays locked until the iterator is exhausted
        or closed; setting ``cancel`` ends the answer before its next token."""
        with self._lock:
            try:
                grammar = grammar_for(
                    options.get("response_format"), self._tokenizer, self._logits_width
                )
            except UnfollowableFormat as exc:
                raise ResponseFormatError(str(exc)) from exc
            decoder = Decoder(
                model=self._model,
                tokenizer=self._tokenizer,
                eos_ids=self._eos_ids,
                device=self._device,
                temperature=options.get("temperature", 0.0),
                top_logprobs=options.get("top_logprobs", 0),
                stop=tuple(options.get("stop") or ()),
                grammar=grammar,
            )
            prompt = self.prompt_ids(messages)
            budget = min(options["max_new_tokens"], self.context_length - len(prompt))
            with self._activated(options["adapter"]):
                yield from decoder.run(prompt, budget, seed=options.get("seed"), cancel=cancel)

    def score_labels(
        self, messages: Sequence[Message], labels: Sequence[str], *, adapter: str | None
    ) -> list[float]:
        """Mean token log-probability of each candidate answer (its tokens and the
        end-of-turn token) after ``messages``: the prompt is computed once, then all the
        candidates in one batched forward pass on its cached keys and values."""
        if not labels:
            return []
        with self._lock:  # a fast tokenizer is not safe to share between threads either
            encoded = [
                [*self._tokenizer(label, add_special_tokens=False)["input_ids"], self._end_of_turn]
                for label in labels
            ]
            prompt = self.prompt_ids(messages)
            with self._activated(adapter), torch.inference_mode():
                return self._score(prompt, encoded)

    def _score(self, prompt: list[int], encoded: list[list[int]]) -> list[float]:
        out = self._model(input_ids=torch.tensor([prompt], device=self._device), use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        width = max(len(ids) for ids in encoded) - 1  # a candidate's last token is not input
        rest = None
        if width > 0:
            cache = out.cache
            cache.batch_repeat_interleave(len(encoded))
            inputs = torch.zeros((len(encoded), width), dtype=torch.long)
            mask = torch.zeros((len(encoded), len(prompt) + width), dtype=torch.long)
            mask[:, : len(prompt)] = 1
            for row, ids in enumerate(encoded):
                inputs[row, : len(ids) - 1] = torch.tensor(ids[:-1])
                mask[row, len(prompt) : len(prompt) + len(ids) - 1] = 1
            positions = torch.arange(len(prompt), len(prompt) + width).expand(len(encoded), -1)
            logits = self._model(
                input_ids=inputs.to(self._device),
                attention_mask=mask.to(self._device),
                position_ids=positions.to(self._device),
                cache=cache,
                use_cache=True,
            ).logits
            rest = torch.log_softmax(logits.float(), dim=-1)
        scores = []
        for row, ids in enumerate(encoded):
            values = [float(first[ids[0]])]
            if rest is not None:
                values += [float(rest[row, i, token]) for i, token in enumerate(ids[1:])]
            scores.append(math.fsum(values) / len(values))
        return scores

    # The same, off the event loop

    async def in_worker(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``call(*args, **kwargs)`` on the model's worker thread, e.g.
        ``await model.in_worker(model.load_adapter, name, path)``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(call, *args, **kwargs))

    async def agenerate(
        self, messages: Sequence[Message], **options: Unpack[GenerateOptions]
    ) -> Generation:
        """:meth:`generate` on the model's worker thread; cancelling stops the answer."""
        cancel = threading.Event()
        try:
            return await self.in_worker(self.generate, messages, cancel=cancel, **options)
        finally:
            cancel.set()

    async def astream(
        self, messages: Sequence[Message], **options: Unpack[GenerateOptions]
    ) -> AsyncGenerator[StreamEvent, None]:
        """:meth:`generate_stream` on the model's worker thread. Its errors (an unknown
        adapter, a prompt too long) are raised by the first ``__anext__``; leaving the
        iteration early (``aclose``) stops the answer."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent | Exception] = asyncio.Queue()
        cancel = threading.Event()

        def post(item: StreamEvent | Exception) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed before the answer did
                loop.call_soon_threadsafe(events.put_nowait, item)

        def work() -> None:
            try:
                for event in self.generate_stream(messages, cancel=cancel, **options):
                    post(event)
            except Exception as exc:
                post(exc)

        loop.run_in_executor(self._executor, work)
        try:
            while True:
                item = await events.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            cancel.set()
