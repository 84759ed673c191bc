"""The ``stillroom`` command line: servers here, admin commands in ``proxy.cli_admin``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import Settings, load_settings, settings_reference
from proxy import cli_admin, processes

app = typer.Typer(
    name="stillroom",
    help="An OpenAI-compatible proxy that distils your teacher traffic into small students.",
    no_args_is_help=True,
    add_completion=False,
)
cli_admin.register(app)

HostOption = Annotated[
    str | None, typer.Option("--host", help="Address to listen on [default: 127.0.0.1].")
]
PortOption = Annotated[int | None, typer.Option("--port", help="Port to listen on.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML configuration file (STILLROOM_* variables win)."),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except (ConfigurationError, ValidationError, ValueError) as exc:
        typer.secho(f"stillroom: invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    processes.configure_logging(settings)
    return settings


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    student_port: Annotated[
        int | None, typer.Option(help="Port of the embedded student server [default: port+1].")
    ] = None,
) -> None:
    """Run everything in one process on embedded defaults: proxy, distiller, student server."""
    settings = _settings(config, host=host, port=port)
    processes.run_everything(settings, student_port=student_port or settings.port + 1)


@app.command()
def proxy(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run the proxy alone (stateless; run several behind a load balancer)."""
    processes.run_proxy(_settings(config, host=host, port=port), workers=workers)


@app.command()
def student(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    config: ConfigOption = None,
) -> None:
    """Run the embedded student server alone (vLLM's HTTP API, on a CPU or one GPU)."""
    processes.run_student(_settings(config), host=host, port=port)


@app.command()
def distiller(config: ConfigOption = None) -> None:
    """Run the distiller: train tasks as pairs accumulate, publish what passes the gate."""
    processes.run_distiller(_settings(config))


@app.command()
def settings() -> None:
    """Print every setting, its environment variable and default, as a Markdown table."""
    typer.echo(settings_reference(), nl=False)


def main() -> None:
    app()
