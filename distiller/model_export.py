"""A task's live student taken away: its LoRA adapter, the base model with the adapter
merged in, or that merged model as GGUF with an Ollama ``Modelfile``.

- ``adapter``: the peft adapter folder (``adapter_config.json``,
  ``adapter_model.safetensors``) with the base's tokenizer and a README naming the base.
  A classifier or extractor version has no adapter: its stored head is written instead,
  which only stillroom reads.
- ``merged``: base and adapter merged (peft ``merge_and_unload``) and saved as safetensors
  with tokenizer, chat template and generation config: a plain Hugging Face folder that
  transformers and vLLM load without peft.
- ``gguf``: ``model.gguf`` (see :mod:`distiller.gguf_export`) and a ``Modelfile`` carrying
  the task's chat template and the system prompt its training exchanges use most.

Runs where the data dir is: the adapter and the base model are files there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from core.errors import InvalidRequestError, NotFoundError
from core.tables import Exchange, StudentHead, StudentVersion, Task
from distiller.base_model import BUNDLED_DIR_NAME, bundled_gguf_file, load_causal_lm
from distiller.gguf_export import GGUF_FILE, TensorType, modelfile, write_gguf

ExportFormat = Literal["adapter", "merged", "gguf"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("adapter", "merged", "gguf")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "stillroom.json")
_SYSTEM_SAMPLE = 2000  # latest training exchanges read for the task's system prompt

Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ModelExport:
    """What an export wrote: the version and the files in ``out``."""

    task: str
    number: int
    kind: str
    out: Path
    files: list[str]


def live_version(*, engine: Engine, task: str) -> StudentVersion:
    """The task's active version; NotFoundError when the task or its version is missing."""
    with Session(engine) as session:
        row = session.get(Task, task)
        if row is None:
            raise NotFoundError(f"unknown task {task!r}", param="task")
        if row.active_version_id is None:
            raise NotFoundError(f"task {task!r} has no live version; train one first")
        version = session.get(StudentVersion, row.active_version_id)
        if version is None:
            raise NotFoundError(f"task {task!r}'s live version is missing from the store")
        session.expunge(version)
        return version


def training_system_prompt(*, engine: Engine, task: str) -> str | None:
    """The system message the task's latest teacher exchanges carry most often."""
    with Session(engine) as session:
        requests = session.exec(
            select(Exchange.request)
            .where(Exchange.task == task, Exchange.served_by != "student", Exchange.status == "ok")
            .order_by(col(Exchange.created_at).desc())
            .limit(_SYSTEM_SAMPLE)
        ).all()
    counts: Counter[str] = Counter()
    for request in requests:
        for message in request.get("messages") or []:
            if message.get("role") in ("system", "developer"):
                counts[_text(message.get("content"))] += 1
                break
    return counts.most_common(1)[0][0] if counts else None


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def export_model(
    *,
    engine: Engine,
    task: str,
    fmt: ExportFormat,
    out: Path,
    tensor_type: TensorType = "f16",
    step: Step | None = None,
) -> ModelExport:
    """Write the live version of ``task`` to the folder ``out`` in ``fmt``."""
    version = live_version(engine=engine, task=task)
    say = step or (lambda _: None)
    if version.kind != "lora" and fmt != "adapter":
        raise InvalidRequestError(
            f"task {task!r}'s live version v{version.number} is a {version.kind}: a head "
            f"on an embedding model, not a language model, so it has no {fmt} form "
            "(export --format adapter writes its head)",
            param="format",
        )
    out.mkdir(parents=True, exist_ok=True)
    if version.kind != "lora":
        _export_head(engine, version, out)
    elif fmt == "adapter":
        say("copying the adapter")
        export_adapter(base_model=version.base_model, adapter=Path(version.adapter_path), out=out)
    elif fmt == "merged":
        say("merging the adapter into the base model")
        export_merged(base_model=version.base_model, adapter=Path(version.adapter_path), out=out)
    else:
        system = training_system_prompt(engine=engine, task=task)
        export_gguf(
            base_model=version.base_model,
            adapter=Path(version.adapter_path),
            out=out,
            system=system,
            tensor_type=tensor_type,
            step=say,
        )
    files = sorted(p.name for p in out.iterdir())
    return ModelExport(task, version.number, version.kind, out, files)


def export_adapter(*, base_model: str, adapter: Path, out: Path) -> None:
    """The peft adapter folder, the base's tokenizer, and a README naming the base."""
    _check_adapter(adapter)
    out.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (adapter / name).is_file():
            shutil.copy2(adapter / name, out / name)
    _tokenizer(base_model).save_pretrained(str(out))
    (out / "README.md").write_text(
        f"# LoRA adapter\n\nA peft LoRA adapter for the base model `{base_model}` "
        "(`adapter_config.json` names it as `base_model_name_or_path`). Load it with "
        "`peft.PeftModel.from_pretrained(base, this_folder)` or serve it with "
        "`vllm serve BASE --enable-lora --lora-modules student=this_folder`.\n"
    )


def export_merged(*, base_model: str, adapter: Path, out: Path) -> None:
    """Base and adapter merged into one Hugging Face folder, loadable without peft."""
    import torch
    from peft import PeftModel

    _check_adapter(adapter)
    model, tokenizer = load_causal_lm(base_model, dtype=torch.float32)
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` property.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        student = PeftModel.from_pretrained(model, str(adapter))
    merged: Any = student.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def export_gguf(
    *,
    base_model: str,
    adapter: Path,
    out: Path,
    system: str | None,
    tensor_type: TensorType = "f16",
    step: Step | None = None,
) -> None:
    """``model.gguf`` of the merged student and the ``Modelfile`` that runs it in Ollama."""
    say = step or (lambda _: None)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stillroom-merged-") as staging:
        merged = Path(staging)
        say("merging the adapter into the base model")
        export_merged(base_model=base_model, adapter=adapter, out=merged)
        say(f"writing {GGUF_FILE} ({tensor_type})")
        write_gguf(
            merged,
            out / GGUF_FILE,
            tensor_type=tensor_type,
            tokenizer_gguf=_bundled_tokenizer(base_model),
        )
        template = _tokenizer(str(merged)).chat_template
    (out / "Modelfile").write_text(modelfile(chat_template=template, system=system))


def _bundled_tokenizer(base_model: str) -> Path | None:
    """The bundled base's own GGUF file, whose tokenizer metadata llama.cpp knows, when
    the student is on the bundled base (its converted folder)."""
    folder = Path(base_model)
    if folder.name == BUNDLED_DIR_NAME and (folder / "stillroom-base.json").is_file():
        return bundled_gguf_file()
    return None


def _export_head(engine: Engine, version: StudentVersion, out: Path) -> None:
    with Session(engine) as session:
        head = session.get(StudentHead, version.id)
    if head is None:
        raise NotFoundError(f"the head of v{version.number} is missing from the store")
    name = f"{version.kind}-head.bin"
    (out / name).write_bytes(head.data)
    (out / "README.md").write_text(
        f"# {version.kind} head\n\n`{name}` is stillroom's {version.kind} head of v"
        f"{version.number}, over the embedding model `{version.base_model}`. It is not a "
        "language model: only stillroom reads it (no merged or GGUF form).\n"
    )
    (out / "stillroom.json").write_text(
        json.dumps({"kind": version.kind, "number": version.number, "base": version.base_model})
        + "\n"
    )


def _check_adapter(adapter: Path) -> None:
    if not (adapter / "adapter_config.json").is_file():
        raise NotFoundError(f"the adapter folder {adapter} is missing (is the data dir here?)")


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())
