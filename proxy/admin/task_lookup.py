"""Which task an admin path names: ``/admin/tasks/{task}`` takes the task's key
(``ticket-triage@acme``, or ``ticket-triage`` for the default tenant's), or a bare name
that exactly one tenant has a task by, or a name and ``?tenant=`` to pick one.

Every route under ``/admin/tasks/{task}`` resolves its task here (:data:`TaskKeyDep`), so a
name means the same task on all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Query
from sqlmodel import Session, col, select

from core.errors import InvalidRequestError, NotFoundError
from core.tables import Task
from core.tenants import SEPARATOR, TENANT, split_task_key, task_key
from proxy.gateway.deps import RuntimeDep

TenantQuery = Annotated[
    str | None, Query(description="the tenant whose task (or tasks) the path means")
]


def check_tenant_query(tenant: str | None) -> str | None:
    """``tenant`` if it can name a tenant; a 400 otherwise (no store query for it)."""
    if tenant is not None and not TENANT.match(tenant):
        raise InvalidRequestError(f"invalid tenant {tenant!r}", param="tenant")
    return tenant


def resolve_task(session: Session, task: str, tenant: str | None = None) -> Task:
    """The task ``task`` names (see the module): 404 when none, 400 when a bare name is
    several tenants' and no ``tenant`` picks one."""
    tenant = check_tenant_query(tenant)
    if SEPARATOR in task or tenant is not None:
        name, named_tenant = split_task_key(task)
        if tenant is not None and SEPARATOR in task and named_tenant != tenant:
            raise InvalidRequestError(
                f"task {task!r} is tenant {named_tenant!r}'s, not {tenant!r}", param="tenant"
            )
        key = task_key(name, tenant if tenant is not None else named_tenant)
        return _found(session.get(Task, key), task, tenant)
    candidates = _tasks_named(session, task)
    if len(candidates) > 1:
        keys = ", ".join(repr(t.name) for t in candidates)
        raise InvalidRequestError(
            f"task name {task!r} is several tenants' ({keys}): name one by its key or "
            "with ?tenant=",
            param="task",
            code="ambiguous_task",
        )
    return _found(candidates[0] if candidates else None, task, tenant)


def tasks_of(session: Session, tenant: str | None) -> Sequence[Task]:
    """Every task, or ``tenant``'s only, by key."""
    query = select(Task).order_by(col(Task.name))
    if check_tenant_query(tenant) is not None:
        query = query.where(Task.tenant == tenant)
    return session.exec(query).all()


def _tasks_named(session: Session, name: str) -> list[Task]:
    """Every tenant's task called ``name``: the default tenant's key is the name itself,
    any other tenant's the name, ``@`` and the tenant."""
    prefix = f"{name}{SEPARATOR}"
    rows = session.exec(
        select(Task)
        .where((col(Task.name) == name) | col(Task.name).startswith(prefix, autoescape=True))
        .order_by(col(Task.name))
    ).all()
    return [row for row in rows if split_task_key(row.name)[0] == name]


def _found(task: Task | None, asked: str, tenant: str | None) -> Task:
    if task is None:
        whose = f" of tenant {tenant!r}" if tenant is not None else ""
        raise NotFoundError(f"unknown task {asked!r}{whose}", param="task")
    return task


def _task_key(task: str, runtime: RuntimeDep, tenant: TenantQuery = None) -> str:
    with Session(runtime.engine) as session:
        return resolve_task(session, task, tenant).name


# The key of the task a route's ``{task}`` (and ``?tenant=``) names.
TaskKeyDep = Annotated[str, Depends(_task_key)]
