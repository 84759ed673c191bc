"""``stillroom import`` and ``stillroom export``: teacher pairs in from a file, and a task's
training data or live student out.

``import`` and ``export --format jsonl`` are clients of a running stillroom's admin API;
the model formats read the store and the data dir themselves (the adapter and the base
model are files there), so they run where the distiller does, with its configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import httpx
import sqlalchemy as sa
import typer
from pydantic import ValidationError
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn

from core.errors import ConfigurationError, StillroomError
from core.settings import load_settings
from core.store import create_store_engine
from proxy.cli import admin as cli_admin
from proxy.cli.admin import DEFAULT_URL, AdminClient, TokenOption, UrlOption, console

ExportFormat = Literal["jsonl", "adapter", "merged", "gguf"]
_CHUNK = 1024 * 1024


def _fail(message: str) -> NoReturn:
    console.print(f"[red]stillroom: {message}[/red]")
    raise typer.Exit(1)


def import_pairs(
    file: Annotated[
        Path, typer.Argument(help="JSONL: OpenAI chat fine-tuning lines or request/response lines.")
    ],
    task: Annotated[str, typer.Option("--task", help="Task to load the pairs into.")],
    skip_invalid: Annotated[
        bool, typer.Option(help="Store the valid lines even if some are invalid.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Load teacher pairs from FILE into TASK (created if missing), so it can train before
    traffic arrives. Requests already stored for the task are skipped as duplicates."""
    if not file.is_file():
        _fail(f"no such file: {file}")
    client = AdminClient(url, token)
    client.http.timeout = httpx.Timeout(None)  # a large file takes its time
    params = {"skip_invalid": "true"} if skip_invalid else {}
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(f"sending {file.name}", total=file.stat().st_size)

        def chunks() -> Iterator[bytes]:
            with file.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    progress.advance(bar, len(chunk))
                    yield chunk

        result = client.call(
            "POST",
            f"/admin/tasks/{task}/import",
            content=chunks(),
            params=params,
            headers={"content-type": "application/jsonl"},
        )
    for error in result["errors"]:
        console.print(f"[yellow]line {error['line']}: {error['message']}[/yellow]")
    console.print(
        f"{task}: imported {result['imported']}, duplicate {result['duplicates']}, "
        f"skipped {result['skipped']} (weight 0), invalid {result['invalid']}"
    )


def export(
    task: str,
    out: Annotated[
        Path, typer.Option("--out", help="JSONL file (jsonl) or folder (the model formats).")
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="jsonl: curated pairs as OpenAI fine-tuning JSONL; adapter: the live "
            "version's LoRA adapter; merged: base and adapter as one safetensors model; "
            "gguf: that model as GGUF with an Ollama Modelfile.",
        ),
    ] = "jsonl",
    gguf_type: Annotated[
        str, typer.Option("--gguf-type", help="Tensor type of the GGUF matrices: f16 or f32.")
    ] = "f16",
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML configuration (model formats: store and data dir)."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Write TASK's curated pairs (--format jsonl, through the admin API), or its live
    student version (--format adapter|merged|gguf, from the store and data dir)."""
    if fmt == "jsonl":
        cli_admin.export(task, out, url=url, token=token)
        return
    if gguf_type not in ("f16", "f32"):
        _fail(f"--gguf-type is f16 or f32, not {gguf_type!r}")
    _export_model(task, fmt, out, "f16" if gguf_type == "f16" else "f32", config)


def _export_model(
    task: str,
    fmt: Literal["adapter", "merged", "gguf"],
    out: Path,
    tensor_type: Literal["f16", "f32"],
    config: Path | None,
) -> None:
    try:
        settings = load_settings(config)
        engine = create_store_engine(settings.database_url)
    except (ConfigurationError, ValidationError, ValueError) as exc:
        typer.secho(f"stillroom: invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    from distiller.model_export import export_model  # brings torch

    columns = (SpinnerColumn(), TextColumn("{task.description}"))
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            step = progress.add_task(f"exporting {task} ({fmt})", total=None)
            result = export_model(
                engine=engine,
                task=task,
                fmt=fmt,
                out=out,
                tensor_type=tensor_type,
                step=lambda what: progress.update(step, description=what),
            )
    except StillroomError as exc:
        _fail(exc.message)
    except sa.exc.OperationalError as exc:
        _fail(f"cannot reach the store: {exc.orig}")
    finally:
        engine.dispose()
    console.print(
        f"{task}: v{result.number} ({result.kind}) exported as {fmt} to {out}: "
        + ", ".join(result.files)
    )


def register(app: typer.Typer) -> None:
    app.command("import")(import_pairs)
    app.command()(export)
