"""Task identification: the X-Stillroom-Task header, else a stable hash of the template."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.errors import InvalidRequestError
from core.tasks import TaskRef, identify_task
from core.wire import ChatCompletionRequest

SYSTEM = "Classify the ticket."
FUNCTION: dict[str, Any] = {
    "name": "lookup_order",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": FUNCTION,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "schema": {"type": "object", "properties": {"label": {"type": "string"}}},
    },
}
# The derived name of make_request()'s template: sha256 over the sorted-key JSON of
# {"model", "system", "tools", "response_format"}. Part of the contract: stored exchanges,
# dashboards and rollouts refer to tasks by it, so it must never change between releases.
EXPECTED_DERIVED_NAME = "auto-609e7bba"


def make_request(
    *,
    model: str = "gpt-4o-mini",
    system: str | list[dict[str, Any]] | None = SYSTEM,
    question: str = "My card was charged twice",
    **fields: Any,
) -> ChatCompletionRequest:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": question})
    return ChatCompletionRequest.model_validate({"model": model, "messages": messages, **fields})


def derived(request: ChatCompletionRequest) -> str:
    return identify_task(None, request).name


# The header.


def test_header_names_the_task() -> None:
    assert identify_task("tickets", make_request()) == TaskRef(name="tickets", derived=False)


def test_header_wins_over_the_derived_name() -> None:
    request = make_request(tools=[TOOL])

    assert identify_task("support.tickets:v2", request).name == "support.tickets:v2"


def test_header_is_stripped_of_surrounding_blanks() -> None:
    assert identify_task("  tickets ", make_request()).name == "tickets"


def test_header_of_sixty_four_characters_is_accepted() -> None:
    name = "t" * 64

    assert identify_task(name, make_request()).name == name


@pytest.mark.parametrize(
    "header",
    ["", "   ", "-tickets", ".tickets", "two words", "tickets/v2", "tâche", "t" * 65, "a\nb"],
)
def test_invalid_header_is_refused_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        identify_task(header, make_request())

    assert caught.value.param == "X-Stillroom-Task"
    assert caught.value.status_code == 400


# Derived names.


def test_derived_name_is_auto_and_eight_hex_digits() -> None:
    task = identify_task(None, make_request())

    assert task.derived is True
    assert re.fullmatch(r"auto-[0-9a-f]{8}", task.name)


def test_derived_name_is_stable_across_calls() -> None:
    assert derived(make_request()) == derived(make_request())


def test_derived_name_is_stable_across_processes() -> None:
    assert derived(make_request()) == EXPECTED_DERIVED_NAME


def test_derived_name_does_not_depend_on_the_hash_seed() -> None:
    code = (
        "from core.tasks import identify_task\n"
        "from core.wire import ChatCompletionRequest\n"
        "request = ChatCompletionRequest.model_validate({'model': 'gpt-4o-mini', 'messages': ["
        f"{{'role': 'system', 'content': {SYSTEM!r}}}, {{'role': 'user', 'content': 'x'}}]}})\n"
        "print(identify_task(None, request).name)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    )

    assert result.stdout.strip() == EXPECTED_DERIVED_NAME


def test_requests_differing_only_in_user_messages_share_a_task() -> None:
    assert derived(make_request(question="Where is my parcel?")) == derived(
        make_request(question="Cancel my subscription")
    )


def test_sampling_parameters_and_user_do_not_change_the_task() -> None:
    plain = make_request()
    tuned = make_request(temperature=0.1, max_tokens=20, seed=7, user="customer-42")

    assert derived(plain) == derived(tuned)


def test_system_prompt_changes_the_task() -> None:
    assert derived(make_request(system="Summarise the ticket.")) != derived(make_request())


def test_request_without_system_prompt_has_a_task_of_its_own() -> None:
    assert derived(make_request(system=None)) != derived(make_request())


def test_developer_message_counts_as_system_prompt() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": SYSTEM},
                {"role": "user", "content": "Different words"},
            ],
        }
    )

    assert derived(request) == derived(make_request())


def test_model_changes_the_task() -> None:
    assert derived(make_request(model="gpt-4o")) != derived(make_request())


def test_tools_change_the_task() -> None:
    assert derived(make_request(tools=[TOOL])) != derived(make_request())


def test_tool_schema_changes_the_task() -> None:
    other = {"type": "function", "function": {**FUNCTION, "name": "refund"}}

    assert derived(make_request(tools=[other])) != derived(make_request(tools=[TOOL]))


def test_response_format_changes_the_task() -> None:
    assert derived(make_request(response_format=RESPONSE_FORMAT)) != derived(make_request())


def test_key_order_of_schemas_does_not_change_the_task() -> None:
    reordered = {"function": FUNCTION, "type": "function"}

    assert derived(make_request(tools=[reordered])) == derived(make_request(tools=[TOOL]))


def test_content_as_text_parts_counts_like_a_string() -> None:
    parts = [{"type": "text", "text": "Classify "}, {"type": "text", "text": "the ticket."}]

    assert derived(make_request(system=parts)) == derived(make_request(system=SYSTEM))
