"""The ``stillroom`` command line: servers here, admin commands in ``proxy.cli.admin``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from sqlalchemy.engine import Engine

from core.errors import ConfigurationError, StoreSchemaError
from core.migrations import BASELINE, SchemaStatus
from core.settings import Settings, load_settings, settings_reference
from core.store import create_store_engine, create_tables, schema_status
from proxy.cli import admin as cli_admin
from proxy.cli import feedback as cli_feedback
from proxy.cli import forget as cli_forget
from proxy.cli import transfer as cli_transfer

# proxy.processes.servers (the servers) is imported by the commands that run one: it brings torch,
# which the admin commands have no use for.

app = typer.Typer(
    name="stillroom",
    help="An OpenAI-compatible proxy that distils your teacher traffic into small students.",
    no_args_is_help=True,
    add_completion=False,
)
cli_admin.register(app)
cli_feedback.register(app)
cli_forget.register(app)
cli_transfer.register(app)

HostOption = Annotated[
    str | None, typer.Option("--host", help="Address to listen on [default: 127.0.0.1].")
]
PortOption = Annotated[int | None, typer.Option("--port", help="Port to listen on.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="TOML configuration file (STILLROOM_* variables win)."),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    settings = _load_settings(config, **overrides)
    from proxy.processes import servers

    servers.configure_logging(settings)
    return settings


def _load_settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except (ConfigurationError, ValidationError, ValueError) as exc:
        typer.secho(f"stillroom: invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    student_port: Annotated[
        int | None, typer.Option(help="Port of the embedded student server [default: port+1].")
    ] = None,
) -> None:
    """Run everything on embedded defaults: proxy, student server, and the distiller in a
    child process."""
    settings = _settings(config, host=host, port=port)
    from proxy.processes import servers

    servers.run_everything(settings, student_port=student_port or settings.port + 1)


@app.command()
def proxy(
    host: HostOption = None,
    port: PortOption = None,
    config: ConfigOption = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
) -> None:
    """Run the proxy alone (stateless; run several behind a load balancer)."""
    from proxy.processes import servers

    servers.run_proxy(_settings(config, host=host, port=port), workers=workers)


@app.command()
def student(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8001,
    config: ConfigOption = None,
) -> None:
    """Run the embedded student server alone (vLLM's HTTP API, on a CPU or one GPU)."""
    from proxy.processes import servers

    servers.run_student(_settings(config), host=host, port=port)


@app.command()
def distiller(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of /metrics and /healthz.")] = 8002,
    config: ConfigOption = None,
) -> None:
    """Run the distiller: train tasks as pairs accumulate, publish what passes the gate."""
    from proxy.processes import servers

    servers.run_distiller(_settings(config), host=host, port=port)


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


db = typer.Typer(
    help="The store's schema: where it stands, and upgrading it (stillroom also upgrades "
    "it at start).",
    no_args_is_help=True,
)
app.add_typer(db, name="db")


@db.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Print the store's schema revision and this build's, and whether an upgrade is pending."""
    with _store(config) as engine:
        status = schema_status(engine)
    typer.echo(f"store:   {_describe(status)}")
    typer.echo(f"head:    {status.head}")
    if not status.known:
        typer.secho(
            "stillroom: this build is older than the store; upgrade stillroom", fg="red", err=True
        )
        raise typer.Exit(1)
    if status.pending:
        typer.echo(f"pending: {', '.join(status.pending)} (`stillroom db upgrade` applies them)")
    else:
        typer.echo("up to date")


@db.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Bring the store to this build's schema, keeping every row.

    stillroom also does this at start. Back up a Postgres store first: an upgrade is one
    transaction, but only a backup takes the store back to the release before.
    """
    with _store(config) as engine:
        before = schema_status(engine)
        try:
            create_tables(engine)
        except StoreSchemaError as exc:
            typer.secho(f"stillroom: {exc}", fg="red", err=True)
            raise typer.Exit(1) from exc
    if before.pending:
        typer.echo(
            f"upgraded the store from {before.current or 'no revision'} to {before.head} "
            f"(applied {', '.join(before.pending)})"
        )
    else:
        typer.echo(f"the store is already at {before.head}")


@contextmanager
def _store(config: Path | None) -> Iterator[Engine]:
    """The engine of the configured store; exits with a message when it cannot be reached."""
    settings = _load_settings(config)
    try:
        engine = create_store_engine(settings.database_url)
    except ConfigurationError as exc:
        typer.secho(f"stillroom: invalid configuration: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"url:     {engine.url.render_as_string(hide_password=True)}")
    try:
        yield engine
    except sa.exc.OperationalError as exc:
        typer.secho(f"stillroom: cannot reach the store: {exc.orig}", fg="red", err=True)
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()


def _describe(status: SchemaStatus) -> str:
    if status.current is None:
        if status.has_tables:
            return f"no revision: tables of a release before migrations (taken as {BASELINE})"
        return "empty: no tables yet"
    if not status.known:
        return f"{status.current} (newer than this build)"
    return status.current


def main() -> None:
    app()
