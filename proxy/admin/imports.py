"""``POST /admin/tasks/{task}/import``: a JSONL file of teacher pairs becomes the task's
imported exchanges (see :mod:`core.exchange_import` for the line formats), so that a task
can train before its traffic arrives.

The body is read as it streams, line by line, up to ``STILLROOM_IMPORT_MAX_BYTES``. A file
with a line that is not a pair stores nothing (the answer names every such line) unless
``skip_invalid=true``, which stores the good lines and reports the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from core.errors import InvalidRequestError, PayloadTooLargeError
from core.exchange_import import (
    ImportedPair,
    ImportOutcome,
    check_task_key,
    parse_lines,
    store_pairs,
)
from proxy.admin.api import require_admin
from proxy.gateway.deps import RuntimeDep

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

_ERRORS_SHOWN = 20  # lines named in a refusal; the count says how many more


@router.post("/tasks/{task}/import")
async def post_import(
    task: str,
    request: Request,
    runtime: RuntimeDep,
    skip_invalid: Annotated[
        bool, Query(description="store the valid lines of a file that has invalid ones")
    ] = False,
) -> dict[str, Any]:
    """Import the body's pairs into ``task``: counts of imported, duplicate (already asked
    in the file or stored for the task), skipped (weight 0) and invalid lines."""
    check_task_key(task)
    outcome = ImportOutcome()
    pairs: list[ImportedPair] = []
    async for number, lines in _numbered_lines(request, runtime.settings.import_max_bytes):
        pairs += parse_lines(lines, outcome, start=number)
    if outcome.errors and not skip_invalid:
        raise InvalidRequestError(_refusal(outcome), param="body", code="invalid_import_file")
    await asyncio.to_thread(
        store_pairs, engine=runtime.engine, task=task, pairs=pairs, outcome=outcome
    )
    return {"object": "import", "task": task, **outcome.document()}


async def _numbered_lines(request: Request, limit: int) -> AsyncIterator[tuple[int, list[bytes]]]:
    """The body's complete lines as they arrive, each batch with its first line's number."""
    received, number, rest = 0, 1, b""
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLargeError(
                f"the import file is larger than {limit} bytes (STILLROOM_IMPORT_MAX_BYTES)"
            )
        *lines, rest = (rest + chunk).split(b"\n")
        if lines:
            yield number, lines
            number += len(lines)
    if rest:
        yield number, [rest]


def _refusal(outcome: ImportOutcome) -> str:
    shown = "; ".join(f"line {line}: {why}" for line, why in outcome.errors[:_ERRORS_SHOWN])
    more = len(outcome.errors) - _ERRORS_SHOWN
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"{outcome.invalid} invalid line(s), nothing imported (skip_invalid=true stores "
        f"the valid ones): {shown}{tail}"
    )
