"""``stillroom forget``: delete a person's, a task's or a period's exchanges, through the
admin API of a running stillroom (``DELETE /admin/exchanges``). It counts first (a dry
run) and asks before deleting, unless told ``--yes``."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import typer

from proxy.cli.admin import DEFAULT_URL, AdminClient, TokenOption, UrlOption, console


def _what(counts: dict[str, Any]) -> str:
    return (
        f"{counts['exchanges']} exchanges, {counts['audit_exchanges']} audits of them and "
        f"{counts['shadow_results']} shadow results"
    )


def forget(
    user: Annotated[
        str | None,
        typer.Option(help="Whose exchanges: the requests' `user` (or X-Stillroom-Route-Key)."),
    ] = None,
    task: Annotated[str | None, typer.Option(help="A task's exchanges (its name or key).")] = None,
    before: Annotated[
        str | None,
        typer.Option(help="Exchanges created before this ISO 8601 date or datetime (UTC if bare)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Delete without asking.")] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete stored exchanges (and their audits, shadow results and spilled copies) by
    user, task and/or date; all given filters apply together."""
    filters = {
        name: value
        for name, value in (("user", user), ("task", task), ("before", before))
        if value is not None
    }
    if not filters:
        console.print("[red]stillroom: say --user, --task and/or --before[/red]")
        raise typer.Exit(2)
    client = AdminClient(url, token)
    if not yes:
        counted = client.call(
            "DELETE", f"/admin/exchanges?{urlencode({**filters, 'dry_run': 'true'})}"
        )
        console.print(f"would delete {_what(counted)}")
        if counted["exchanges"] == 0 and counted["shadow_results"] == 0:
            return
        if not typer.confirm("Delete them?"):
            console.print("nothing deleted")
            raise typer.Exit(1)
    deleted = client.call("DELETE", f"/admin/exchanges?{urlencode(filters)}")
    spilled = f" and {deleted['spilled']} spilled lines" if deleted["spilled"] else ""
    console.print(f"deleted {_what(deleted)}{spilled}")


def register(app: typer.Typer) -> None:
    app.command()(forget)
