"""The embedded student model: one base in memory, LoRA adapters by name, answers that
never mix, log-probabilities that agree with a plain forward pass, and label scoring."""

from __future__ import annotations

import asyncio
import math
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from distiller.decoding import Generation, StreamPiece
from distiller.inference import (
    AdapterExistsError,
    AdapterLoadError,
    AdapterMissingError,
    AdapterNotFoundError,
    PromptError,
    StudentModel,
)

MESSAGES = [
    {"role": "system", "content": "Reply with the intent label only."},
    {"role": "user", "content": "I want a refund for the ticket"},
]
OTHER = [{"role": "user", "content": "I lost my card yesterday"}]


@pytest.fixture
def student(tiny_model: Path) -> Iterator[StudentModel]:
    model = StudentModel(tiny_model)
    yield model
    model.close()


@pytest.fixture
def broken_adapter(adapters: dict[str, Path], tmp_path: Path) -> Path:
    """An adapter folder whose weights file is not safetensors."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes(
        (adapters["alpha"] / "adapter_config.json").read_bytes()
    )
    (folder / "adapter_model.safetensors").write_bytes(b"not safetensors")
    return folder


def reference_logprobs(
    base: Path, adapter: Path | None, prompt: list[int], answer: list[int]
) -> list[float]:
    """Log-probabilities of ``answer`` after ``prompt`` from one plain forward pass of a
    separately loaded model: the oracle for the student's cached, batched computations."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    model.eval()
    if adapter is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [float(logprobs[len(prompt) + i - 1, token]) for i, token in enumerate(answer)]


def answer(student: StudentModel, adapter: str | None, messages: Any = MESSAGES) -> Generation:
    return student.generate(messages, adapter=adapter, max_new_tokens=12)


def assert_same_answers(got: list[Generation], expected: list[Generation]) -> None:
    """The same answers: the same tokens, with the same log-probabilities to within float
    noise (threads may sum a matrix product in another order)."""
    assert [(g.text, g.token_ids, g.finish_reason) for g in got] == [
        (g.text, g.token_ids, g.finish_reason) for g in expected
    ]
    for answer_got, answer_expected in zip(got, expected, strict=True):
        logprobs = [token["logprob"] for token in answer_got.tokens]
        assert logprobs == pytest.approx([t["logprob"] for t in answer_expected.tokens], abs=1e-4)


def test_greedy_generation_is_deterministic(student: StudentModel) -> None:
    first = answer(student, None)
    second = answer(student, None)
    assert first == second
    assert first.completion_tokens == 12
    assert first.finish_reason == "length"


def test_an_adapter_changes_the_answer(student: StudentModel, adapters: dict[str, Path]) -> None:
    base = answer(student, None)
    student.load_adapter("alpha", adapters["alpha"])
    student.load_adapter("beta", adapters["beta"])
    assert student.adapters() == ["alpha", "beta"]
    texts = {answer(student, name).text for name in ("alpha", "beta")}
    assert len(texts | {base.text}) == 3
    assert answer(student, None) == base  # the base answers as before any adapter


async def test_concurrent_answers_for_two_adapters_never_mix(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    student.load_adapter("beta", adapters["beta"])
    jobs = [(name, messages) for name in ("alpha", "beta", None) for messages in (MESSAGES, OTHER)]
    alone = [answer(student, name, messages) for name, messages in jobs]
    calls = [
        student.agenerate(messages, adapter=name, max_new_tokens=12) for name, messages in jobs * 3
    ]
    assert_same_answers(list(await asyncio.gather(*calls)), alone * 3)


def test_answers_from_many_threads_never_mix(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    student.load_adapter("beta", adapters["beta"])
    jobs = [(name, messages) for name in ("alpha", "beta", None) for messages in (MESSAGES, OTHER)]
    alone = [answer(student, name, messages) for name, messages in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda job: answer(student, *job), jobs * 3))
    assert_same_answers(together, alone * 3)


def test_streamed_pieces_add_up_to_the_answer(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    events = list(student.generate_stream(MESSAGES, adapter="alpha", max_new_tokens=12))
    *pieces, final = events
    assert isinstance(final, Generation)
    assert all(isinstance(piece, StreamPiece) for piece in pieces)
    assert "".join(piece.text for piece in pieces if isinstance(piece, StreamPiece)) == final.text
    assert [t for p in pieces if isinstance(p, StreamPiece) for t in p.tokens] == final.tokens
    assert final == answer(student, "alpha")


async def test_async_stream_gives_the_same_answer(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("beta", adapters["beta"])
    events = [e async for e in student.astream(MESSAGES, adapter="beta", max_new_tokens=12)]
    assert events[-1] == answer(student, "beta")
    assert "".join(e.text for e in events[:-1]) == events[-1].text


async def test_leaving_an_async_stream_early_stops_the_answer(student: StudentModel) -> None:
    forward_passes = 0

    def count(*_: Any) -> None:
        nonlocal forward_passes
        forward_passes += 1

    # The base model answers newlines until the context ends, unless stopped.
    hook = student._model.register_forward_hook(count)
    stream = student.astream(MESSAGES, adapter=None, max_new_tokens=student.context_length)
    assert isinstance(await anext(stream), StreamPiece)
    await stream.aclose()
    await student.in_worker(lambda: None)  # the worker is free once the answer has stopped
    hook.remove()
    assert forward_passes < 20


def test_a_cancelled_answer_ends_before_its_next_token(student: StudentModel) -> None:
    cancel = threading.Event()
    cancel.set()
    generation = student.generate(MESSAGES, adapter=None, max_new_tokens=50, cancel=cancel)
    assert generation.completion_tokens == 0
    assert generation.finish_reason == "length"


async def test_an_unknown_adapter_fails_the_stream_at_its_start(student: StudentModel) -> None:
    stream = student.astream(MESSAGES, adapter="nope", max_new_tokens=3)
    with pytest.raises(AdapterNotFoundError, match="nope"):
        await anext(stream)


def test_mean_logprob_is_the_mean_of_the_token_logprobs(student: StudentModel) -> None:
    generation = student.generate(MESSAGES, adapter=None, max_new_tokens=12, top_logprobs=3)
    logprobs = [token["logprob"] for token in generation.tokens]
    assert generation.mean_logprob == pytest.approx(sum(logprobs) / len(logprobs))
    for token in generation.tokens:
        assert len(token["top_logprobs"]) == 3
        assert token["top_logprobs"][0]["logprob"] == pytest.approx(token["logprob"])  # greedy
        assert token["bytes"] == list(token["token"].encode("utf-8"))


def test_token_logprobs_agree_with_a_plain_forward_pass(
    student: StudentModel, tiny_model: Path, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    for adapter in (None, "alpha"):
        generation = answer(student, adapter)
        prompt = student.prompt_ids(MESSAGES)
        ids = generation.token_ids
        expected = reference_logprobs(
            tiny_model, adapters["alpha"] if adapter else None, prompt, ids
        )
        got = [token["logprob"] for token in generation.tokens]
        assert got == pytest.approx(expected, abs=1e-4)


def test_stop_string_ends_the_answer_before_it(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    full = student.generate(MESSAGES, adapter="alpha", max_new_tokens=20).text
    stop = full[5:8]
    stopped = student.generate(MESSAGES, adapter="alpha", max_new_tokens=20, stop=[stop])
    assert stopped.text == full[: full.index(stop)]
    assert stopped.finish_reason == "stop"
    streamed = student.generate_stream(MESSAGES, adapter="alpha", max_new_tokens=20, stop=[stop])
    assert "".join(e.text for e in streamed if isinstance(e, StreamPiece)) == stopped.text


def test_sampling_with_a_seed_is_reproducible(student: StudentModel) -> None:
    def sample(seed: int) -> str:
        return student.generate(
            MESSAGES, adapter=None, max_new_tokens=16, temperature=1.0, seed=seed
        ).text

    assert sample(7) == sample(7)
    assert sample(7) != answer(student, None, MESSAGES).text


def test_unloaded_adapter_is_gone(student: StudentModel, adapters: dict[str, Path]) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    base = answer(student, None)
    student.unload_adapter("alpha")
    assert student.adapters() == []
    with pytest.raises(AdapterNotFoundError):
        answer(student, "alpha")
    with pytest.raises(KeyError, match="alpha"):
        student.unload_adapter("alpha")
    assert answer(student, None) == base


def test_bad_adapter_raises_and_keeps_the_previous_one_working(
    student: StudentModel, adapters: dict[str, Path], broken_adapter: Path, tmp_path: Path
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    before = answer(student, "alpha")
    with pytest.raises(AdapterMissingError, match="no LoRA adapter at"):
        student.load_adapter("alpha", tmp_path / "nowhere")
    with pytest.raises(AdapterLoadError, match="could not load LoRA adapter 'alpha'"):
        student.load_adapter("alpha", broken_adapter)
    assert student.adapters() == ["alpha"]
    assert answer(student, "alpha") == before


def test_an_adapter_for_another_model_is_refused(student: StudentModel, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        peft_model = get_peft_model(
            LlamaForCausalLM(other), LoraConfig(target_modules="all-linear")
        )
    peft_model.save_pretrained(str(tmp_path / "other"))
    base = answer(student, None)
    with pytest.raises(AdapterLoadError, match="size mismatch"):
        student.load_adapter("other", tmp_path / "other")
    assert student.adapters() == []
    assert answer(student, None) == base


def test_a_failed_first_load_leaves_the_base_model_clean(
    student: StudentModel, adapters: dict[str, Path], broken_adapter: Path
) -> None:
    base = answer(student, None)
    with pytest.raises(AdapterLoadError):
        student.load_adapter("broken", broken_adapter)
    assert answer(student, None) == base
    student.load_adapter("alpha", adapters["alpha"])
    assert answer(student, "alpha") != base


def test_loading_a_name_again_replaces_the_adapter(
    student: StudentModel, adapters: dict[str, Path]
) -> None:
    student.load_adapter("beta", adapters["beta"])
    beta = answer(student, "beta")
    student.load_adapter("task", adapters["alpha"])
    alpha = answer(student, "task")
    student.load_adapter("task", adapters["beta"])
    assert answer(student, "task") == beta != alpha
    assert student.adapters() == ["beta", "task"]
    assert student.adapter_paths()["task"] == str(adapters["beta"])
    with pytest.raises(AdapterExistsError):
        student.load_adapter("task", adapters["alpha"], replace=False)


def test_scored_labels_equal_their_log_probabilities_one_by_one(
    student: StudentModel, tiny_model: Path, adapters: dict[str, Path]
) -> None:
    student.load_adapter("alpha", adapters["alpha"])
    labels = ["refund", "card_lost", "billing", "The answer is no.", ""]
    scores = student.score_labels(MESSAGES, labels, adapter="alpha")
    prompt = student.prompt_ids(MESSAGES)
    end = student.tokenizer.eos_token_id
    for label, score in zip(labels, scores, strict=True):
        ids = [*student.tokenizer(label, add_special_tokens=False)["input_ids"], end]
        expected = reference_logprobs(tiny_model, adapters["alpha"], prompt, ids)
        assert score == pytest.approx(math.fsum(expected) / len(expected), abs=1e-4)
    assert student.score_labels(MESSAGES, labels, adapter=None) != scores
    assert student.score_labels(MESSAGES, [], adapter=None) == []


def test_a_prompt_longer_than_the_context_is_refused(student: StudentModel) -> None:
    long = [{"role": "user", "content": "refund " * student.context_length}]
    with pytest.raises(PromptError, match="maximum context length"):
        answer(student, None, long)


def test_answers_stop_at_the_end_of_the_context(student: StudentModel) -> None:
    prompt = [{"role": "user", "content": "refund " * (student.context_length - 20)}]
    length = len(student.prompt_ids(prompt))
    generation = student.generate(prompt, adapter=None, max_new_tokens=100)
    assert generation.prompt_tokens == length
    assert generation.completion_tokens <= student.context_length - length
