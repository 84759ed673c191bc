"""A Responses request's input listed as OpenAI lists a stored response's input items."""

from __future__ import annotations

from typing import Any

from openai.types.responses import ResponseItem
from pydantic import TypeAdapter

from core.dialects.response_items import input_items, page

from wire_schema import validate_input_items

RESPONSE_ID = "resp_sr" + "0" * 46
TOOL_TURNS: list[Any] = [
    {"type": "message", "role": "developer", "content": "Look orders up."},
    {"role": "user", "content": [{"type": "input_text", "text": "Where is order 7?"}]},
    {
        "type": "function_call",
        "id": "fc_given",
        "call_id": "call_1",
        "name": "lookup_order",
        "arguments": '{"order": 7}',
    },
    {"type": "function_call_output", "call_id": "call_1", "output": '{"status": "shipped"}'},
    {
        "role": "assistant",
        "content": [
            {"type": "output_text", "text": "It shipped."},
            {"type": "refusal", "refusal": "no"},
        ],
    },
]


def listed(request: dict[str, Any], **paging: Any) -> dict[str, Any]:
    options = {"limit": 20, "order": "asc", "after": None, **paging}
    body = page(input_items(request, RESPONSE_ID), **options).model_dump(mode="json")
    validate_input_items(body)
    return body


def test_every_kind_of_input_item_is_listed_in_openais_shape_and_the_sdk_reads_it() -> None:
    body = listed({"input": TOOL_TURNS})
    kinds = [(item["type"], item.get("role")) for item in body["data"]]
    assert kinds == [
        ("message", "developer"),
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseItem)
    parsed = [adapter.validate_python(item) for item in body["data"]]
    assert parsed[0].content[0].text == "Look orders up."
    assert parsed[2].id == "fc_given", "an id the client gave is kept"
    assert parsed[3].output == '{"status": "shipped"}'
    assert [part.type for part in parsed[4].content] == ["output_text", "refusal"]


def test_ids_are_the_same_each_time_and_differ_between_items() -> None:
    first, again = listed({"input": TOOL_TURNS}), listed({"input": TOOL_TURNS})
    ids = [item["id"] for item in first["data"]]
    assert ids == [item["id"] for item in again["data"]]
    assert len(set(ids)) == len(ids)


def test_pages_follow_one_another_newest_first_by_default() -> None:
    request = {"input": TOOL_TURNS}
    newest = listed(request, limit=2, order="desc")
    assert newest["has_more"] is True
    rest = listed(request, limit=10, order="desc", after=newest["last_id"])
    assert rest["has_more"] is False
    every = [item["id"] for item in listed(request)["data"]]
    assert [item["id"] for item in newest["data"] + rest["data"]] == every[::-1]
