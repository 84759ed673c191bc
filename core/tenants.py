"""Tenants: whose traffic is whose. A task belongs to one tenant, and its key in the store
is its name for the default tenant and ``name@tenant`` for any other, so that every row
keyed by task (exchanges, versions, runs, audits) is one tenant's.

Who the tenant of a request is (its API key's hash, a named tenant per key) is
``proxy.gateway.tenancy``'s to say; this module names keys and hashes, and reads the
named tenants an operator configures (``STILLROOM_TENANTS``, ``STILLROOM_TENANTS_FILE``):
each tenant with its keys, each key given as itself or as ``sha256:`` and its hash, and
kept only as that hash, so that no key is held past reading the configuration.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from core.errors import ConfigurationError
from core.tables import DEFAULT_TENANT, TENANT_MAX

__all__ = [
    "DEFAULT_TENANT",
    "TENANT",
    "TenantKeys",
    "key_hash",
    "parse_tenant_keys",
    "read_tenants_file",
    "split_task_key",
    "task_key",
    "tenants_by_key_hash",
    "unnamed_tenant",
]

SEPARATOR = "@"  # never in a task name (core.tasks) nor in a tenant's
TENANT = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{TENANT_MAX - 1}}}$")
HASH_PREFIX = "sha256:"
UNNAMED_PREFIX = "key-"
UNNAMED_DIGITS = 12
# The tenants of keys nobody named: an operator's name of this form would merge its keys
# into another key's tenant.
_UNNAMED = re.compile(rf"^{UNNAMED_PREFIX}[0-9a-f]{{{UNNAMED_DIGITS}}}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")

TenantKeys = dict[str, list[str]]  # tenant -> its keys, each as "sha256:<hex>"


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


def unnamed_tenant(hashed_key: str) -> str:
    """The tenant of a key no operator named: ``key-`` and the first digits of its hash."""
    return UNNAMED_PREFIX + hashed_key[:UNNAMED_DIGITS]


def check_tenant(name: str, *, source: str) -> str:
    """``name`` if it can name a tenant, else a :class:`ConfigurationError` that says why."""
    if not TENANT.match(name):
        raise ConfigurationError(
            f"{source}: invalid tenant name {name!r}: use 1-{TENANT_MAX} lowercase letters, "
            "digits, - and _, starting with a letter or digit"
        )
    if _UNNAMED.match(name):
        raise ConfigurationError(
            f"{source}: tenant name {name!r} is reserved: {UNNAMED_PREFIX} and "
            f"{UNNAMED_DIGITS} hex digits name the tenant of a key nobody named"
        )
    return name


def parse_tenant_keys(value: object, *, source: str = "STILLROOM_TENANTS") -> TenantKeys:
    """Named tenants and their keys, from ``acme=sk-a1,sk-a2;globex=sha256:<hex>``, from
    that mapping as JSON, or from a mapping of tenant to a key or a list of keys. Each key
    comes back as ``sha256:`` and its hash. Errors name the tenant and the place of a bad
    key, never the key."""
    if isinstance(value, str):
        text = value.strip()
        value = _json_object(text, source=source) if text.startswith("{") else _pairs(text)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{source}: give tenants as name=key,key;name=key")
    tenants: TenantKeys = {}
    for name, keys in value.items():
        tenant = check_tenant(str(name).strip(), source=source)
        entries = [keys] if isinstance(keys, str) else keys
        if not isinstance(entries, list) or not entries:
            raise ConfigurationError(f"{source}: tenant {tenant!r} needs one key or more")
        hashed = tenants.setdefault(tenant, [])
        for place, entry in enumerate(entries, start=1):
            if not isinstance(entry, str) or not entry.strip():
                raise ConfigurationError(f"{source}: key {place} of tenant {tenant!r} is empty")
            normalised = _hashed_entry(entry.strip(), tenant=tenant, place=place, source=source)
            if normalised not in hashed:
                hashed.append(normalised)
    return tenants


def read_tenants_file(path: Path) -> TenantKeys:
    """Named tenants from a TOML or JSON file (by its suffix; JSON for ``.json``) holding
    the mapping of ``STILLROOM_TENANTS``: tenant = key, or tenant = [key, ...]."""
    source = f"STILLROOM_TENANTS_FILE {path}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read it: {exc.strerror}") from exc
    if path.suffix.lower() == ".json":
        return parse_tenant_keys(_json_object(text, source=source), source=source)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: not valid TOML: {exc}") from exc
    return parse_tenant_keys(document, source=source)


def tenants_by_key_hash(*configured: TenantKeys) -> dict[str, str]:
    """Each configured key's hash (hex) and its tenant. A key named for two tenants would
    make its traffic either's: a :class:`ConfigurationError`."""
    tenants: dict[str, str] = {}
    for mapping in configured:
        for tenant, entries in mapping.items():
            for entry in entries:
                hashed = entry.removeprefix(HASH_PREFIX)
                known = tenants.setdefault(hashed, tenant)
                if known != tenant:
                    raise ConfigurationError(
                        f"a key with SHA-256 {hashed[:12]}... is given for two tenants, "
                        f"{known!r} and {tenant!r}: each key belongs to one tenant"
                    )
    return tenants


def _pairs(text: str) -> dict[str, list[str]]:
    pairs: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, equals, keys = part.partition("=")
        if not equals:
            # The part may be a key: say where it is, not what it is.
            raise ConfigurationError(
                f"STILLROOM_TENANTS: part {len(pairs) + 1} has no '=': give tenants as "
                "name=key,key;name=key"
            )
        pairs.setdefault(name.strip(), []).extend(k.strip() for k in keys.split(",") if k.strip())
    return pairs


def _json_object(text: str, *, source: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"{source}: not valid JSON: {exc}") from exc


def _hashed_entry(entry: str, *, tenant: str, place: int, source: str) -> str:
    if entry.startswith(HASH_PREFIX):
        digest = entry.removeprefix(HASH_PREFIX).lower()
        if not _HEX.match(digest):
            raise ConfigurationError(
                f"{source}: key {place} of tenant {tenant!r}: after sha256: give the 64 hex "
                "digits of the key's SHA-256"
            )
        return HASH_PREFIX + digest
    return HASH_PREFIX + key_hash(entry)
