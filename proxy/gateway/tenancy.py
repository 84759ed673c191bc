"""Who a request's tenant is: every handler that names a task asks here.

With ``STILLROOM_TENANCY=key`` (the default) each key is a tenant: the one an operator
named for it (``STILLROOM_TENANTS``, ``STILLROOM_TENANTS_FILE``), else ``key-`` and the
first hex digits of its SHA-256. The key is the client's own in pass-through mode, and in
server-key mode the ``STILLROOM_API_KEYS`` entry it presented (``deps.require_client_key``
has checked it is one, so both are the presented key). A request without a key is the
default tenant's. With ``single``, everyone is the default tenant: one team behind the
proxy, as before tenants. Only hashes are compared and kept; a key is never stored.

Stores made before tenants hold every task as the default tenant's; at start
:func:`warn_of_stranded_students` says when ``key`` tenancy would leave their students
serving nobody, and how to keep them.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from core.settings import Settings
from core.tables import Task
from core.tenants import DEFAULT_TENANT, unnamed_tenant

log = logging.getLogger("stillroom.tenancy")


def request_tenant(client_key_hash: str | None, settings: Settings) -> str:
    """The tenant of a request that presented a key with this SHA-256 (None: no key)."""
    if settings.tenancy == "single" or client_key_hash is None:
        return DEFAULT_TENANT
    return settings.key_tenants.get(client_key_hash) or unnamed_tenant(client_key_hash)


def default_tenant_reachable(settings: Settings) -> bool:
    """Whether requests that present a key can be the default tenant's."""
    return settings.tenancy == "single" or DEFAULT_TENANT in settings.key_tenants.values()


def warn_of_stranded_students(engine: Engine, settings: Settings) -> int:
    """Log one warning when default-tenant tasks have a live student that requests with a
    key can no longer reach (a store from before tenants, under ``key`` tenancy with no key
    named for the default tenant). The number of such tasks, 0 when none or reachable."""
    if default_tenant_reachable(settings):
        return 0
    with Session(engine) as session:
        stranded = col(Task.tenant) == DEFAULT_TENANT, col(Task.active_version_id).is_not(None)
        count = session.exec(select(func.count()).select_from(Task).where(*stranded)).one()
        if not count:
            return 0
        names = session.exec(select(Task.name).where(*stranded).order_by(col(Task.name)).limit(3))
        shown = ", ".join(repr(name) for name in names)
    log.warning(
        "%d task(s) of the default tenant have a published student (%s%s): stores made "
        "before tenants keep every task as the default tenant's, and with "
        "STILLROOM_TENANCY=key a request presenting a key is that key's tenant, so these "
        "students answer only requests without a key. To keep them serving your clients, "
        "name the default tenant's key: STILLROOM_TENANTS='default=sha256:<SHA-256 hex of "
        "the key>' (or default=<the key>), or set STILLROOM_TENANCY=single if one team uses "
        "this proxy.",
        count,
        shown,
        ", ..." if count > 3 else "",
    )
    return int(count)
