"""``previous_response_id``: a Responses request that continues an earlier response.

Who holds the earlier response decides who can answer. One a student gave, only stillroom
holds: the request is written out in full (the earlier request's input, its output, then
the new input, back along the chain while stillroom holds it) and answered like any
other, by the student or by a teacher that never saw the earlier turn. One the teacher
gave, only the teacher can continue (it keeps what stillroom cannot: reasoning items,
stored state): the request goes to it as it came, and its chat view is still the whole
conversation where stillroom captured the earlier turn, so the pair is one to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.dialects import responses
from core.errors import InvalidRequestError
from core.tables import Exchange
from proxy.gateway.runtime import Runtime
from proxy.gateway.stored_responses import find_response, readable

# Earlier turns written out at most: a chain longer than this is cut (the teacher, or a
# student, then answers without its oldest turns) rather than read without end.
_MAX_TURNS = 64
_OUTPUT_ITEMS = frozenset({"message", "function_call"})


@dataclass(frozen=True, slots=True)
class Conversation:
    """A Responses request with what its ``previous_response_id`` names resolved."""

    asked: dict[str, Any]  # the request to answer: the client's, or written out in full
    view: dict[str, Any]  # its Chat Completions view, to route by and record
    teacher_state: bool  # it continues a response only the teacher holds
    written_out: bool = False  # ``asked`` is not the client's body: it continued a student's


async def resolve(runtime: Runtime, body: dict[str, Any], *, owner: str | None) -> Conversation:
    """``body`` with its previous response, if it names one, found and resolved; one a
    student gave that ``owner`` may not read (asked with ``store: false``, or made with
    another key) is not found, as OpenAI answers it."""
    previous = body.get("previous_response_id")
    if not isinstance(previous, str) or not previous:
        return Conversation(body, responses.chat_request(body), teacher_state=False)
    earlier = await find_response(runtime, previous)
    if earlier is not None and earlier.served_by == "student":
        if readable(earlier, owner) is None:
            raise InvalidRequestError(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        asked = await _written_out(runtime, body, earlier, owner, turns=1)
        # Where the chain goes back to the teacher's responses, the teacher holds the rest.
        held = "previous_response_id" in asked
        return Conversation(asked, responses.chat_request(asked), held, written_out=True)
    view = responses.chat_request(body)
    if earlier is not None:
        view = _after(earlier, view)
    return Conversation(body, view, teacher_state=True)


async def _written_out(
    runtime: Runtime, body: dict[str, Any], earlier: Exchange, owner: str | None, *, turns: int
) -> dict[str, Any]:
    """``body`` without its ``previous_response_id``: the student's ``earlier`` response,
    and the turns before it that stillroom holds, written into its input."""
    before = dict(earlier.client_request or {})
    previous = before.get("previous_response_id")
    if isinstance(previous, str) and turns < _MAX_TURNS:
        older = await find_response(runtime, previous)
        if (
            older is not None
            and older.served_by == "student"
            and readable(older, owner) is not None
        ):
            before = await _written_out(runtime, before, older, owner, turns=turns + 1)
    output = (earlier.client_response or {}).get("output") or []
    items = [
        *_items(before.get("input")),
        *(item for item in output if isinstance(item, dict) and item.get("type") in _OUTPUT_ITEMS),
        *_items(body.get("input")),
    ]
    asked = {key: value for key, value in body.items() if key != "previous_response_id"}
    if isinstance(before.get("previous_response_id"), str):  # the teacher holds the rest
        asked["previous_response_id"] = before["previous_response_id"]
    asked["input"] = items
    return asked


def _items(given: Any) -> list[Any]:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(given, str):
        return [{"type": "message", "role": "user", "content": given}]
    return list(given) if isinstance(given, list) else []


def _after(earlier: Exchange, view: dict[str, Any]) -> dict[str, Any]:
    """The chat view of a request that continues the captured ``earlier`` exchange: its
    conversation and answer, then the new turns, under the new request's instructions."""
    choices = (earlier.response or {}).get("choices") or []
    message = (choices[0].get("message") or {}) if choices else {}
    if earlier.status != "ok" or not message:
        return view
    answer: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        answer["tool_calls"] = message["tool_calls"]
    before = [m for m in earlier.request.get("messages") or [] if m.get("role") != "system"]
    new = view["messages"]
    system = [m for m in new[:1] if m.get("role") == "system"]
    return {**view, "messages": [*system, *before, answer, *new[len(system) :]]}
