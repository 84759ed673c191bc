"""Fixtures of the distiller tests: offline Hugging Face, LoRA adapters on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.vllm import make_lora_adapter


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different adapters of the tiny model, ``alpha`` and ``beta``."""
    root = tmp_path_factory.mktemp("lora-adapters")
    return {
        name: make_lora_adapter(tiny_model, root / name, seed=seed)
        for name, seed in (("alpha", 1), ("beta", 2))
    }
