"""Copy the response schemas the test suite checks against out of OpenAI's OpenAPI description.

The source is ``openapi.yaml`` from https://github.com/openai/openai-openapi (MIT licence, see
``LICENSE`` beside this file; the copy in this directory came from commit ``f85dbe2``). The
whole description is about 3 MB, and the tests must not depend on anything outside the
repository, so this script keeps only the component schemas our wire tests validate against
(chat completions, stream chunks, errors, model lists, embeddings, Responses API responses,
their stream events and input item lists) plus every schema they reach through ``$ref``,
and writes them to ``schemas.json`` beside this file as
``{"components": {"schemas": {...}}}``. The schemas are copied verbatim: the ``$ref``
strings stay ``#/components/schemas/<Name>`` and OpenAPI-only keywords (``nullable``,
``discriminator``, ``x-oai*``) are left for ``tests/wire_schema.py`` to deal with.

Usage::

    python tests/openapi/extract.py /path/to/openapi.yaml [-o tests/openapi/schemas.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]

ROOT_SCHEMAS: tuple[str, ...] = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ErrorResponse",
    "Error",
    "ListModelsResponse",
    "Model",
    "CreateEmbeddingResponse",
    "Response",
    "ResponseStreamEvent",
    "ResponseItemList",
)
"""The schemas the wire tests name; everything they reference comes along."""

REF_PREFIX = "#/components/schemas/"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "schemas.json"

_YAML_BOOL_TAG = "tag:yaml.org,2002:bool"
_YAML_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def _yaml12_loader() -> Any:
    """A safe loader that reads plain scalars the YAML 1.2 way, as OpenAPI 3.1 requires.

    PyYAML follows YAML 1.1, where an unquoted ``on``/``off``/``yes``/``no`` is a boolean
    and ``2024-01-01`` a date; in an ``enum`` or ``default`` that would silently change the
    schema (or make it unserialisable as JSON). Only ``true``/``false`` stay booleans here.
    """
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    resolvers: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {
        first: [
            (tag, rx) for tag, rx in entries if tag not in (_YAML_BOOL_TAG, _YAML_TIMESTAMP_TAG)
        ]
        for first, entries in base.yaml_implicit_resolvers.items()
    }
    yaml12_bool = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
    for first in "tTfF":
        resolvers.setdefault(first, []).insert(0, (_YAML_BOOL_TAG, yaml12_bool))
    return type("Yaml12SafeLoader", (base,), {"yaml_implicit_resolvers": resolvers})


def load_openapi(path: Path) -> dict[str, Any]:
    """Parse the OpenAPI description at ``path``."""
    with path.open("rb") as handle:
        document = yaml.load(handle, Loader=_yaml12_loader())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return document


def iter_refs(node: object) -> list[str]:
    """Every ``$ref`` string anywhere inside ``node``, in document order."""
    found: list[str] = []
    stack: list[object] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key == "$ref" and isinstance(value, str):
                    found.append(value)
                else:
                    stack.append(value)
        elif isinstance(current, list):
            stack.extend(current)
    return found


def select_schemas(all_schemas: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """``roots`` and every component schema they reference, directly or not."""
    selected: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in selected:
            continue
        if name not in all_schemas:
            raise KeyError(f"components.schemas has no {name!r}")
        selected[name] = all_schemas[name]
        for ref in iter_refs(all_schemas[name]):
            if not ref.startswith(REF_PREFIX):
                raise ValueError(f"{name}: $ref {ref!r} points outside {REF_PREFIX}")
            pending.append(ref.removeprefix(REF_PREFIX))
    return selected


def extract(source: Path, output: Path) -> int:
    """Write the subset of ``source``'s schemas to ``output``; returns how many were kept."""
    document = load_openapi(source)
    all_schemas = document.get("components", {}).get("schemas")
    if not isinstance(all_schemas, dict):
        raise ValueError(f"{source}: no components.schemas mapping")
    subset = select_schemas(all_schemas, ROOT_SCHEMAS)
    text = json.dumps(
        {"components": {"schemas": subset}}, indent=1, sort_keys=True, ensure_ascii=False
    )
    output.write_text(text + "\n", encoding="utf-8")
    return len(subset)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", type=Path, help="path to OpenAI's openapi.yaml")
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON"
    )
    args = parser.parse_args(argv)
    count = extract(args.source, args.output)
    print(f"wrote {count} schemas to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
