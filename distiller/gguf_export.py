"""A merged student as one GGUF file, for llama.cpp and Ollama, and the Ollama ``Modelfile``
that runs it with the task's chat template and system prompt.

The tensors are written the way llama.cpp's ``convert_hf_to_gguf.py`` writes a Llama: GGUF
tensor names from gguf-py's name map, the ``q_proj`` and ``k_proj`` rows permuted to
llama.cpp's rotary layout (transformers' GGUF loader permutes them back), norms in f32 and
matrices in f16 or f32. The tokenizer travels as metadata: copied from the bundled base's
own GGUF file when the student is on it, else written from the Hugging Face tokenizer
(byte-level BPE, ``tokenizer.ggml.model`` ``gpt2``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.errors import InvalidRequestError

if TYPE_CHECKING:
    from gguf import GGUFWriter

TensorType = Literal["f16", "f32"]
GGUF_FILE = "model.gguf"
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3  # gguf.TokenType values


def write_gguf(
    merged_dir: Path,
    target: Path,
    *,
    tensor_type: TensorType = "f16",
    tokenizer_gguf: Path | None = None,
    name: str = "stillroom student",
) -> Path:
    """Write the Llama-architecture model in ``merged_dir`` (safetensors, as
    ``save_pretrained`` leaves it) to ``target``. ``tokenizer_gguf``: a GGUF file whose
    ``tokenizer.*`` metadata to copy instead of describing the folder's tokenizer."""
    import gguf

    config = json.loads((merged_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise InvalidRequestError(
            f"GGUF export writes Llama-architecture students; this base is "
            f"{config.get('model_type')!r} (export --format merged instead)",
            param="format",
        )
    writer = gguf.GGUFWriter(str(target), arch="llama")
    writer.add_name(name)
    _add_hyperparameters(writer, config)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if tensor_type == "f16" else gguf.LlamaFileType.ALL_F32
    )
    if tokenizer_gguf is not None:
        _copy_tokenizer(writer, tokenizer_gguf)
    else:
        _add_tokenizer(writer, merged_dir, config)
    for gguf_name, array in _tensors(merged_dir, config, tensor_type):
        writer.add_tensor(gguf_name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return target


def _add_hyperparameters(writer: GGUFWriter, config: dict[str, Any]) -> None:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    rope = config.get("rope_parameters") or {}
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    if rope.get("rope_type", "default") != "default":
        raise InvalidRequestError(
            f"GGUF export does not write rope scaling {rope.get('rope_type')!r}", param="format"
        )


def _tensors(
    merged_dir: Path, config: dict[str, Any], tensor_type: TensorType
) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
    import gguf
    from safetensors.numpy import load_file

    blocks = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, blocks)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    tied = bool(config.get("tie_word_embeddings"))
    for file in sorted(merged_dir.glob("*.safetensors")):
        for hf_name, array in load_file(str(file)).items():
            if tied and hf_name == "lm_head.weight":
                continue  # llama.cpp ties the output to token_embd when output is absent
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise InvalidRequestError(f"GGUF export cannot place tensor {hf_name!r}")
            if hf_name.endswith("q_proj.weight"):
                array = _permute(array, heads, heads)
            elif hf_name.endswith("k_proj.weight"):
                array = _permute(array, heads, kv_heads)
            wide = tensor_type == "f32" or array.ndim == 1
            yield gguf_name, array.astype(np.float32 if wide else np.float16)


def _permute(weights: np.ndarray[Any, Any], heads: int, kv_heads: int) -> np.ndarray[Any, Any]:
    """llama.cpp's ``LlamaModel.permute``: rotary pairs from halves to interleaved."""
    if kv_heads != heads:
        heads = kv_heads
    shape = weights.shape
    split = weights.reshape(heads, 2, shape[0] // heads // 2, *shape[1:])
    return split.swapaxes(1, 2).reshape(shape)


def _copy_tokenizer(writer: GGUFWriter, source: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)


def _add_tokenizer(writer: GGUFWriter, merged_dir: Path, config: dict[str, Any]) -> None:
    """A byte-level BPE tokenizer as llama.cpp's ``gpt2`` vocabulary."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(merged_dir), local_files_only=True)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise InvalidRequestError(
            f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')!r}",
            param="format",
        )
    vocab = tokenizer.get_vocab()
    tokens = [""] * max(len(vocab), int(config["vocab_size"]))
    for token, index in vocab.items():
        tokens[index] = token
    special = set(tokenizer.all_special_tokens)
    missing = [i for i, token in enumerate(tokens) if not token]
    for index in missing:
        tokens[index] = f"[PAD{index}]"
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            _TOKEN_CONTROL if t in special or i in missing else _TOKEN_NORMAL
            for i, t in enumerate(tokens)
        ]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model["merges"]])
    for token_id, add in (
        (config.get("bos_token_id"), writer.add_bos_token_id),
        (
            tokenizer.eos_token_id if tokenizer.eos_token else config.get("eos_token_id"),
            writer.add_eos_token_id,
        ),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if isinstance(token_id, int):
            add(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


# Ollama's Go-template equivalents of the chat templates students use.
_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def modelfile(*, chat_template: str | None, system: str | None, gguf_file: str = GGUF_FILE) -> str:
    """An Ollama ``Modelfile`` for ``gguf_file``: the chat template in Ollama's syntax, the
    task's system prompt, greedy decoding, and the template's end-of-turn as stop token.
    A template of no known family is left out: Ollama then reads the one in the GGUF."""
    lines = [f"FROM ./{gguf_file}"]
    template = chat_template or ""
    if "<|im_start|>" in template:
        lines += [f'TEMPLATE """{_CHATML}"""', 'PARAMETER stop "<|im_end|>"']
    elif "<|start_header_id|>" in template:
        lines += [f'TEMPLATE """{_LLAMA3}"""', 'PARAMETER stop "<|eot_id|>"']
    if system:
        lines.append(f'SYSTEM """{system.replace(chr(34) * 3, chr(34) * 2)}"""')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
