"""Taking a task's live student away: its adapter, the base with the adapter merged
(loadable by transformers without peft), and GGUF (read back by transformers) with an
Ollama Modelfile. Each answers a training prompt as the student (base + adapter) does.
A LoRA adapter of the tiny Llama, published as the live version of a task in SQLite and
Postgres; the real CLI for the command."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy.engine import Engine
from sqlmodel import Session

from core.errors import InvalidRequestError, NotFoundError
from core.exchange_import import ImportOutcome, parse_lines, store_pairs
from core.store import create_store_engine, create_tables
from core.tables import StudentHead, StudentVersion, Task
from distiller.gguf_export import GGUF_FILE
from distiller.model_export import export_model

from fakes.vllm import make_lora_adapter

TASK = "support"
SYSTEM = "Answer the customer in one sentence."
PROMPT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "I want a refund for the ticket."},
]


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(tiny_model, tmp_path_factory.mktemp("adapter"), seed=3)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_store_engine(database_url)
    create_tables(engine)
    yield engine
    engine.dispose()


def publish(engine: Engine, *, kind: str, base: str, adapter: Path) -> None:
    """A task whose training exchanges mostly carry SYSTEM, live on a version of ``kind``."""
    lines = [
        {"messages": [*PROMPT[:1], {"role": "user", "content": f"Q{n}"}, answer(n)]}
        for n in range(3)
    ]
    lines.append({"messages": [{"role": "system", "content": "Other."}, *PROMPT[1:], answer(9)]})
    pairs = parse_lines([json.dumps(line).encode() for line in lines], ImportOutcome())
    store_pairs(engine=engine, task=TASK, pairs=pairs, outcome=ImportOutcome())
    version = StudentVersion(
        id="v1",
        task=TASK,
        number=1,
        kind=kind,
        state="published",
        base_model=base,
        adapter_name=f"{TASK}-v1",
        adapter_path=str(adapter),
    )
    with Session(engine) as session, session.begin():
        session.add(version)
        if kind != "lora":
            session.add(StudentHead(version_id="v1", data=b"head bytes"))
        task = session.get(Task, TASK)
        assert task is not None
        task.active_version_id = "v1"


def answer(n: int) -> dict[str, str]:
    return {"role": "assistant", "content": f"Answer {n}."}


@pytest.fixture
def live(engine: Engine, tiny_model: Path, adapter: Path) -> Engine:
    publish(engine, kind="lora", base=str(tiny_model), adapter=adapter)
    return engine


def greedy(model: Any, tokenizer: Any) -> tuple[str, torch.Tensor]:
    inputs = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        logits = model(**inputs).logits[0, -1]
    text: str = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    return text, logits


@pytest.fixture(scope="module")
def student(tiny_model: Path, adapter: Path) -> tuple[str, torch.Tensor]:
    """The student's greedy answer and next-token logits: base + adapter through peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(base, str(adapter)).eval()
    return greedy(model, AutoTokenizer.from_pretrained(tiny_model))


def test_merged_model_loads_without_peft_and_answers_like_the_student(
    live: Engine, tmp_path: Path, tiny_model: Path, student: tuple[str, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    export_model(engine=live, task=TASK, fmt="merged", out=out)
    assert not (out / "adapter_config.json").exists()
    assert (out / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    text, _ = greedy(model, tokenizer)
    assert text == student[0]
    base_text, _ = greedy(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer)
    assert base_text != text, "the adapter changes nothing: the test proves no merge"


def test_gguf_reads_back_with_transformers_and_answers_like_the_student(
    live: Engine, tmp_path: Path, student: tuple[str, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gguf"
    export_model(engine=live, task=TASK, fmt="gguf", out=out, tensor_type="f32")
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=GGUF_FILE).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=GGUF_FILE)
    text, logits = greedy(model, tokenizer)
    assert text == student[0]
    assert torch.allclose(logits, student[1], atol=1e-4)


def test_f16_gguf_logits_stay_within_half_precision_of_the_students(
    live: Engine, tmp_path: Path, student: tuple[str, torch.Tensor]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gguf"
    export_model(engine=live, task=TASK, fmt="gguf", out=out)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file=GGUF_FILE).eval()
    _, logits = greedy(model, AutoTokenizer.from_pretrained(out, gguf_file=GGUF_FILE))
    assert int(logits.argmax()) == int(student[1].argmax())
    assert torch.allclose(logits, student[1], atol=0.05 * float(student[1].abs().max()))


def test_modelfile_runs_the_gguf_with_the_chat_template_and_the_tasks_system_prompt(
    live: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "gguf"
    export_model(engine=live, task=TASK, fmt="gguf", out=out)
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{GGUF_FILE}\n")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "PARAMETER temperature 0" in modelfile


def test_adapter_export_holds_the_adapter_the_tokenizer_and_names_the_base(
    live: Engine, tmp_path: Path, tiny_model: Path, student: tuple[str, torch.Tensor]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    export_model(engine=live, task=TASK, fmt="adapter", out=out)
    assert str(tiny_model) in (out / "README.md").read_text()
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        model = PeftModel.from_pretrained(base, str(out)).eval()
    assert greedy(model, AutoTokenizer.from_pretrained(out))[0] == student[0]


def test_a_classifier_version_has_no_merged_form_but_exports_its_head(
    engine: Engine, tmp_path: Path
) -> None:
    publish(engine, kind="classifier", base="BAAI/bge-small-en-v1.5", adapter=tmp_path / "none")
    with pytest.raises(InvalidRequestError, match="is a classifier"):
        export_model(engine=engine, task=TASK, fmt="merged", out=tmp_path / "merged")
    export_model(engine=engine, task=TASK, fmt="adapter", out=tmp_path / "head")
    assert (tmp_path / "head" / "classifier-head.bin").read_bytes() == b"head bytes"


def test_cli_exports_the_live_version_as_gguf_and_names_what_it_wrote(
    live: Engine, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from proxy.cli.main import app

    # In this process (torch is loaded already): the command as `stillroom export` runs it.
    monkeypatch.setenv("STILLROOM_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "gguf"
    done = CliRunner().invoke(app, ["export", TASK, "--format", "gguf", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "v1 (lora) exported as gguf" in done.output
    assert {p.name for p in out.iterdir()} == {GGUF_FILE, "Modelfile"}


def test_export_of_a_task_without_a_live_version_says_to_train_one(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.add(Task(name=TASK))
    with pytest.raises(NotFoundError, match="no live version; train one first"):
        export_model(engine=engine, task=TASK, fmt="merged", out=Path("unused"))


@pytest.mark.slow
def test_gguf_of_a_student_on_the_bundled_base_carries_its_own_tokenizer(
    tiny_model: Path, adapter: Path, tmp_path: Path
) -> None:
    """The bundled base's tokenizer metadata, which llama.cpp and transformers read, copied
    as it is (here onto the tiny model's tensors, to stay quick)."""
    from gguf import GGUFReader

    from distiller.base_model import bundled_gguf_file
    from distiller.gguf_export import write_gguf
    from distiller.model_export import export_merged

    merged = tmp_path / "merged"
    export_merged(base_model=str(tiny_model), adapter=adapter, out=merged)
    bundled = bundled_gguf_file()
    write_gguf(merged, tmp_path / GGUF_FILE, tokenizer_gguf=bundled)
    original, written = GGUFReader(str(bundled)), GGUFReader(str(tmp_path / GGUF_FILE))
    copied = {k for k in original.fields if k.startswith("tokenizer.")}
    assert copied <= set(written.fields)
    for name in copied:
        mine, theirs = written.fields[name], original.fields[name]
        assert len(mine.data) == len(theirs.data), name
        assert mine.contents(slice(-50, None)) == theirs.contents(slice(-50, None)), name
