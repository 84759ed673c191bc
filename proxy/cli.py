"""The ``stillroom`` command line."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from core.errors import ConfigurationError
from core.settings import Settings, load_settings, settings_reference

app = typer.Typer(
    name="stillroom",
    help="An OpenAI-compatible proxy that distils your teacher traffic into small students.",
    no_args_is_help=True,
    add_completion=False,
)

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
        return load_settings(config, **overrides)
    except (ConfigurationError, ValidationError, ValueError) as exc:
        typer.secho(f"stillroom: invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _run_proxy(settings: Settings, workers: int) -> None:
    _configure_logging(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": settings.log_level,
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    if workers > 1:
        # Each worker builds its own app from the environment, so hand the settings on.
        os.environ.update(_environment(settings))
        uvicorn.run(
            "proxy.app:create_app_from_environment", factory=True, workers=workers, **options
        )
        return
    from proxy.app import create_app

    uvicorn.run(create_app(settings), **options)


def _environment(settings: Settings) -> dict[str, str]:
    values = settings.model_dump(mode="json", exclude_defaults=True)
    env = {}
    for name, value in values.items():
        if isinstance(value, str):
            env[f"STILLROOM_{name.upper()}"] = value
        elif value is not None:
            env[f"STILLROOM_{name.upper()}"] = json.dumps(value)
    for secret in ("teacher_api_key", "admin_token"):
        value = getattr(settings, secret)
        if value is not None:
            env[f"STILLROOM_{secret.upper()}"] = value.get_secret_value()
    if settings.api_keys:
        env["STILLROOM_API_KEYS"] = ",".join(k.get_secret_value() for k in settings.api_keys)
    return env


@app.command()
def serve(host: HostOption = None, port: PortOption = None, config: ConfigOption = None) -> None:
    """Run everything in one process on embedded defaults (SQLite, local data folder)."""
    _run_proxy(_settings(config, host=host, port=port), workers=1)


@app.command()
def proxy(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run the proxy alone (stateless; run several behind a load balancer)."""
    _run_proxy(_settings(config, host=host, port=port), workers=workers)


@app.command()
def settings() -> None:
    """Print every setting, its environment variable and default, as a Markdown table."""
    typer.echo(settings_reference(), nl=False)


def main() -> None:
    app()
