"""The ``stillroom`` command line: servers here, admin commands in ``proxy.cli_admin``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import Settings, load_settings, settings_reference
from proxy import cli_admin

# proxy.processes (the servers) is imported by the commands that run one: it brings torch,
# which the admin commands have no use for.

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
    from proxy import processes

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
    from proxy import processes

    processes.run_everything(settings, student_port=student_port or settings.port + 1)


@app.command()
def proxy(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run the proxy alone (stateless; run several behind a load balancer)."""
    from proxy import processes

    processes.run_proxy(_settings(config, host=host, port=port), workers=workers)


@app.command()
def student(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    config: ConfigOption = None,
) -> None:
    """Run the embedded student server alone (vLLM's HTTP API, on a CPU or one GPU)."""
    from proxy import processes

    processes.run_student(_settings(config), host=host, port=port)


@app.command()
def distiller(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of /metrics and /healthz.")] = 8002,
    config: ConfigOption = None,
) -> None:
    """Run the distiller: train tasks as pairs accumulate, publish what passes the gate."""
    from proxy import processes

    processes.run_distiller(_settings(config), host=host, port=port)


@app.command()
def settings() -> None:
    """Print every setting, its environment variable and default, as a Markdown table."""
    typer.echo(settings_reference(), nl=False)


@app.command()
def demo(
    fast: Annotated[
        bool, typer.Option("--fast", help="A smoke run: the tiny model, less traffic.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port of the demo's proxy.")] = 8000,
    directory: Annotated[
        Path, typer.Option("--dir", help="Store, artefacts, log and report of the demo.")
    ] = Path("stillroom-demo"),
    rate: Annotated[float | None, typer.Option(help="App requests per second.", min=0.1)] = None,
    minutes: Annotated[
        float | None, typer.Option(help="End with a report by then, whatever the stage.")
    ] = None,
    keep_serving: Annotated[
        bool, typer.Option(help="Keep the proxy running after the report, until Ctrl-C.")
    ] = True,
) -> None:
    """The whole loop on a simulated teacher: capture, training, shadow, live, a report."""
    from proxy.demo.run import DemoOptions, run_demo

    options = DemoOptions(
        directory=directory,
        port=port,
        fast=fast,
        keep_serving=keep_serving,
        rate=rate,
        minutes=minutes,
    )
    run_demo(options)


def main() -> None:
    app()
