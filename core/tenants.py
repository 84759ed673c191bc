"""Tenants: whose traffic is whose. A task belongs to one tenant, and its key in the store
is its name for the default tenant and ``name@tenant`` for any other, so that every row
keyed by task (exchanges, versions, runs, audits) is one tenant's.

Who the tenant of a request is (its API key, its hash, a named tenant per key) is
``proxy.gateway.tenancy``'s to say; this module only names keys and hashes.
"""

from __future__ import annotations

import hashlib
import re

from core.tables import DEFAULT_TENANT, TENANT_MAX

__all__ = ["DEFAULT_TENANT", "TENANT", "key_hash", "split_task_key", "task_key"]

SEPARATOR = "@"  # never in a task name (core.tasks) nor in a tenant's
TENANT = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{TENANT_MAX - 1}}}$")


def key_hash(key: str) -> str:
    """The SHA-256 (hex) of an API key: what the store keeps instead of the key."""
    return hashlib.sha256(key.encode()).hexdigest()


def task_key(name: str, tenant: str = DEFAULT_TENANT) -> str:
    """The store's key of ``tenant``'s task ``name``."""
    return name if tenant == DEFAULT_TENANT else f"{name}{SEPARATOR}{tenant}"


def split_task_key(key: str) -> tuple[str, str]:
    """A task key's name and tenant."""
    name, separator, tenant = key.rpartition(SEPARATOR)
    return (name, tenant) if separator else (key, DEFAULT_TENANT)
