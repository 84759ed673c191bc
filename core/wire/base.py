"""The base of every wire model: unknown fields kept, optional fields sent only when given.

OpenAI's bodies mix two kinds of optional field. Some are always there and ``null`` when
empty (a choice's ``logprobs``, a message's ``refusal``); a model declares those with a
``None`` default and they are always serialised. Others are left out unless they mean
something (a chunk's ``usage`` without ``include_usage``, a delta's ``role`` after the
first chunk) yet sent as ``null`` when the sender says so (``"usage": null`` on every chunk
of a stream that asked for usage); a model declares those as :data:`IfGiven` and they are
serialised only when the producer gave them, ``None`` included. A body parsed and dumped
again therefore keeps exactly the fields it came with.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

T = TypeVar("T")


class _SentIfGiven:
    """Field metadata: serialise the field only when it was given."""

    def __repr__(self) -> str:
        return "SENT_IF_GIVEN"


SENT_IF_GIVEN = _SentIfGiven()

IfGiven = Annotated[T | None, SENT_IF_GIVEN]
"""An optional field that is left out of the body unless its producer gave it."""


class WireModel(BaseModel):
    """A model of the OpenAI wire format. Extra fields are allowed: clients and upstreams
    send fields this code does not know about, and they are passed on untouched."""

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _leave_out_ungiven(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _sent_if_given(type(self)):
            if name not in self.model_fields_set and data.get(name) is None:
                data.pop(name, None)
        return data


@functools.cache
def _sent_if_given(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(
        name for name, field in model.model_fields.items() if SENT_IF_GIVEN in field.metadata
    )
