"""LoRA training: what is supervised, how it is cut, and what a run reports and saves."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from distiller.base_model import load_causal_lm, resolve_base_model
from distiller.tiny_model import build_tiny_model
from distiller.training import (
    IGNORE_INDEX,
    LoraTrainingConfig,
    TrainingCancelled,
    TrainingExample,
    TrainingProgress,
    TrainingResult,
    encode_example,
    resolve_device,
    supervised_loss,
    train_lora,
    use_bf16,
)

SYSTEM = (
    "Classify the customer message into one intent label: refund, billing, card_lost, "
    "greeting, goodbye, complaint, balance, transfer. Reply with the label only."
)
MAPPING = [
    ("I want a refund for the ticket", "refund"),
    ("I was charged twice on the card", "billing"),
    ("I lost my card yesterday", "card_lost"),
    ("Hello there", "greeting"),
    ("Goodbye and thank you", "goodbye"),
    ("I am not happy with the service", "complaint"),
    ("Would like to check the balance", "balance"),
    ("Transfer money to savings", "transfer"),
]
# fp32: on a 2-core machine shared with other processes, bf16 kernels on a model this small
# spend their time waiting on each other's threads (30x slower than fp32).
FAST = LoraTrainingConfig(epochs=3, batch_size=4, learning_rate=1e-2, max_length=128, bf16=False)


def chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def intent_examples(count: int = 16) -> list[TrainingExample]:
    pairs = [MAPPING[i % len(MAPPING)] for i in range(count)]
    return [
        TrainingExample(messages=chat(f"{text} ({i})"), answer=label)
        for i, (text, label) in enumerate(pairs)
    ]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model: str) -> Any:
    return load_causal_lm(tiny_model)[1]


@pytest.fixture(scope="module")
def trained(
    tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, list[TrainingProgress]]:
    progress: list[TrainingProgress] = []
    result = train_lora(
        base_model=tiny_model,
        examples=intent_examples(),
        config=FAST,
        output_dir=tmp_path_factory.mktemp("adapter"),
        on_progress=progress.append,
    )
    return result, progress


def supervised_text(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    kept = [t for t, label in zip(input_ids, labels, strict=True) if label != IGNORE_INDEX]
    assert kept == [label for label in labels if label != IGNORE_INDEX]
    return str(tokenizer.decode(kept))


def test_only_the_answer_and_its_end_token_are_supervised(tokenizer: Any) -> None:
    example = TrainingExample(messages=chat("I lost my card"), answer="card_lost")
    encoded = encode_example(tokenizer, example, max_length=512)

    assert encoded is not None
    assert supervised_text(tokenizer, encoded.input_ids, encoded.labels) == "card_lost<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        example.messages, tokenize=False, add_generation_prompt=True
    )
    prompt_length = encoded.labels.index(next(x for x in encoded.labels if x != IGNORE_INDEX))
    assert tokenizer.decode(encoded.input_ids[:prompt_length]) == prompt


def test_long_prompt_is_cut_from_the_left_and_the_answer_kept_whole(tokenizer: Any) -> None:
    long_text = "I want a refund for the ticket. " * 40
    example = TrainingExample(messages=chat(long_text), answer="refund please")
    full = encode_example(tokenizer, example, max_length=4096)
    cut = encode_example(tokenizer, example, max_length=48)

    assert full is not None
    assert cut is not None
    assert len(full.input_ids) > 48
    assert len(cut.input_ids) == 48
    assert cut.input_ids == full.input_ids[-48:]
    assert supervised_text(tokenizer, cut.input_ids, cut.labels) == "refund please<|im_end|>"


def test_answer_longer_than_the_limit_is_not_encoded(tokenizer: Any) -> None:
    example = TrainingExample(messages=chat("hi"), answer="refund " * 40)

    assert encode_example(tokenizer, example, max_length=16) is None


def test_sharing_the_prompt_prefix_gives_the_textbook_loss(tiny_model: str, tokenizer: Any) -> None:
    model, _ = load_causal_lm(tiny_model)
    encoded = [encode_example(tokenizer, e, 512) for e in intent_examples(3)]
    width = max(len(e.input_ids) for e in encoded if e is not None)
    rows = [(e.input_ids, e.labels) for e in encoded if e is not None]
    pad = [width - len(ids) for ids, _ in rows]
    input_ids = torch.tensor([ids + [0] * n for (ids, _), n in zip(rows, pad, strict=True)])
    labels = torch.tensor([lab + [IGNORE_INDEX] * n for (_, lab), n in zip(rows, pad, strict=True)])
    mask = torch.tensor([[1] * (width - n) + [0] * n for n in pad])

    with torch.no_grad():
        shared = supervised_loss(model, input_ids, mask, labels)
        plain = supervised_loss(model, input_ids, mask, labels, share_prefix=False)
        textbook = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss

    assert shared.item() == pytest.approx(textbook.item(), rel=1e-5)
    assert plain.item() == pytest.approx(textbook.item(), rel=1e-5)


def test_loss_falls_when_overfitting_a_fixed_mapping(tiny_model: str, tmp_path: Path) -> None:
    losses: list[float] = []
    train_lora(
        base_model=tiny_model,
        examples=intent_examples(16),
        config=replace(FAST, epochs=8),
        output_dir=tmp_path,
        on_progress=lambda p: losses.append(p.loss),
    )

    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first * 0.5


def test_progress_is_reported_every_step_up_to_the_total(
    trained: tuple[TrainingResult, list[TrainingProgress]],
) -> None:
    result, progress = trained

    assert [p.step for p in progress] == list(range(1, result.steps + 1))
    assert all(p.total_steps == result.steps == 12 for p in progress)
    assert all(math.isfinite(p.eta_seconds) and p.eta_seconds >= 0 for p in progress)
    assert progress[-1].eta_seconds == 0
    assert progress[-1].epoch == FAST.epochs
    assert result.final_loss == progress[-1].loss


def test_saved_adapter_loads_with_peft_and_changes_the_output(
    tiny_model: str, trained: tuple[TrainingResult, list[TrainingProgress]]
) -> None:
    from peft import PeftModel

    result, _ = trained
    model, tokenizer = load_causal_lm(tiny_model)
    inputs: Any = tokenizer.apply_chat_template(
        chat("I lost my card"), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        before = model(**inputs).logits
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        adapted = PeftModel.from_pretrained(model, result.adapter_dir)
    with torch.no_grad():
        after = adapted(**inputs).logits

    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert not torch.allclose(before, after)


def test_run_summary_is_saved_beside_the_adapter(
    trained: tuple[TrainingResult, list[TrainingProgress]],
) -> None:
    result, _ = trained

    summary = json.loads((result.adapter_dir / "stillroom.json").read_text())

    assert summary["config"]["r"] == FAST.r
    assert summary["result"]["steps"] == result.steps
    assert summary["result"]["trainable_parameters"] == result.trainable_parameters > 0


def test_same_seed_gives_identical_adapter_weights(tiny_model: str, tmp_path: Path) -> None:
    config = replace(FAST, epochs=1)
    for name in ("a", "b"):
        train_lora(
            base_model=tiny_model,
            examples=intent_examples(8),
            config=config,
            output_dir=tmp_path / name,
        )

    first = load_file(tmp_path / "a" / "adapter_model.safetensors")
    second = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_zero_examples_raise_value_error(tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        train_lora(base_model=tiny_model, examples=[], config=FAST, output_dir=tmp_path)


def test_should_stop_cancels_the_run_before_the_next_step(tiny_model: str, tmp_path: Path) -> None:
    steps: list[int] = []

    with pytest.raises(TrainingCancelled):
        train_lora(
            base_model=tiny_model,
            examples=intent_examples(),
            config=FAST,
            output_dir=tmp_path / "adapter",
            on_progress=lambda p: steps.append(p.step),
            should_stop=lambda: len(steps) >= 2,
        )

    assert steps == [1, 2]
    assert not (tmp_path / "adapter").exists()


def test_bf16_autocast_trains_fp32_adapter_weights(tiny_model: str, tmp_path: Path) -> None:
    result = train_lora(
        base_model=tiny_model,
        examples=intent_examples(4),
        config=replace(FAST, epochs=1, bf16=True),
        output_dir=tmp_path,
    )

    weights = load_file(tmp_path / "adapter_model.safetensors")
    assert math.isfinite(result.final_loss)
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


def test_bf16_is_used_as_configured_and_only_on_capable_devices() -> None:
    assert use_bf16(False, "cpu") is False
    assert use_bf16(True, "cpu") is True
    assert use_bf16("auto", "mps") is False
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in {"cpu", "cuda"}


@pytest.mark.slow
def test_smollm2_learns_an_intent_mapping(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = resolve_base_model(None, tmp_path_factory.mktemp("data"))
    losses: list[float] = []

    result = train_lora(
        base_model=base,
        examples=intent_examples(32),
        config=LoraTrainingConfig(epochs=2, batch_size=8, learning_rate=1e-3),
        output_dir=tmp_path_factory.mktemp("smollm2-adapter"),
        on_progress=lambda p: losses.append(p.loss),
    )

    assert result.steps == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 * 0.5
