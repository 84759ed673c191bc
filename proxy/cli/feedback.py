"""``stillroom feedback``: rate an answer, a client of ``POST /admin/exchanges/{id}/feedback``
(see ``proxy.admin.feedback``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer

from proxy.cli.admin import DEFAULT_URL, AdminClient, TokenOption, UrlOption, console


def feedback(
    exchange_id: Annotated[
        str, typer.Argument(help="The answer's X-Stillroom-Exchange-Id.", show_default=False)
    ],
    rating: Annotated[Literal["good", "bad"], typer.Argument(help="good or bad.")],
    correction: Annotated[
        str | None,
        typer.Option(
            help="The right answer (with bad): its text, or the arguments of its one tool call."
        ),
    ] = None,
    correction_file: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="A file holding the right answer: its text, or a JSON assistant message "
            '{"content": ..., "tool_calls": [...]}.',
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Mark the answer EXCHANGE_ID good or bad, with the right answer if it was wrong."""
    if correction is not None and correction_file is not None:
        raise typer.BadParameter("give --correction or --correction-file, not both")
    body: dict[str, Any] = {"rating": rating}
    if correction is not None:
        body["correction"] = correction
    elif correction_file is not None:
        body["correction"] = _read_correction(correction_file)
    result = AdminClient(url, token).call(
        "POST", f"/admin/exchanges/{exchange_id}/feedback", json=body
    )
    console.print(f"{result['exchange_id']} ({result['task']}): {result['rating']}")
    for effect in result["effects"]:
        console.print(f"  {effect}")


def _read_correction(path: Path) -> str | dict[str, Any]:
    """A file's text, or the assistant message it holds as a JSON object."""
    text = path.read_text()
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(document, dict) and ("content" in document or "tool_calls" in document):
        return document
    return text


def register(app: typer.Typer) -> None:
    app.command()(feedback)
