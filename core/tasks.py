"""Task identification: a client-chosen name, or a stable hash of the prompt template."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import orjson

from core.errors import InvalidRequestError
from core.tables import DEFAULT_TENANT, TASK_NAME_MAX
from core.tenants import task_key
from core.wire import ChatCompletionRequest

TASK_HEADER = "x-stillroom-task"
_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._:-]{{0,{TASK_NAME_MAX - 1}}}$")


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A request's task: ``name`` is its key in the store (see ``core.tenants``)."""

    name: str
    derived: bool
    tenant: str = DEFAULT_TENANT


def identify_task(
    header: str | None, request: ChatCompletionRequest, tenant: str = DEFAULT_TENANT
) -> TaskRef:
    """The task of a request: the ``X-Stillroom-Task`` header when given, else
    ``auto-`` and a hash of what makes a prompt template: teacher model, system prompt,
    tools and response_format. Requests that differ only in user messages share a task.
    The task is ``tenant``'s: another tenant's task of the same name is another task.
    """
    if header is not None:
        name = header.strip()
        if not _NAME.match(name):
            raise InvalidRequestError(
                f"invalid X-Stillroom-Task {header!r}: use 1-{TASK_NAME_MAX} letters, digits "
                "and . _ : -, starting with a letter or digit",
                param="X-Stillroom-Task",
            )
        return TaskRef(name=task_key(name, tenant), derived=False, tenant=tenant)
    template = {
        "model": request.model,
        "system": request.system_prompt(),
        "tools": request.tools or [],
        "response_format": request.response_format or {},
    }
    digest = hashlib.sha256(orjson.dumps(template, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return TaskRef(name=task_key(f"auto-{digest[:8]}", tenant), derived=True, tenant=tenant)
