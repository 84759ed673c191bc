"""Task shapes and agreement scoring."""

from __future__ import annotations

import pytest

from core.agreement import ShapeRules, detect_shape, json_field_f1, normalise_label, score


def test_answers_from_a_small_closed_set_are_label_like() -> None:
    answers = ["billing", "Billing.", "refund", "shipping", " refund "] * 4
    assert detect_shape(answers) == "label"


def test_answers_that_parse_as_json_objects_are_json() -> None:
    answers = ['{"a": 1}', '{"a": 2, "b": "x"}', '```json\n{"a": 3}\n```']
    assert detect_shape(answers) == "json"


def test_requested_json_format_makes_a_json_task() -> None:
    assert detect_shape(["not json"], json_requested=True) == "json"


def test_long_varied_answers_are_free_text() -> None:
    answers = [
        f"Dear customer, we are sorry about order {n} and will refund it." for n in range(30)
    ]
    assert detect_shape(answers) == "text"


def test_many_distinct_short_answers_are_not_labels() -> None:
    assert detect_shape([f"label{n}" for n in range(200)] * 3) == "text"


def test_rare_answers_make_a_set_not_closed() -> None:
    answers = ["a"] * 10 + ["b"] * 10 + [f"once {n}" for n in range(5)]
    assert detect_shape(answers) == "text"


def test_label_normalisation_ignores_case_space_quotes_and_full_stop() -> None:
    assert normalise_label('  "Card  Declined." ') == normalise_label("card declined")


def test_label_agreement_is_normalised_exact_match() -> None:
    assert score("label", "Refund.", "refund").agrees
    assert not score("label", "refund", "billing").agrees


def test_json_agreement_is_exact_and_scored_by_field_f1() -> None:
    same = score("json", '{"a": 1, "b": 2}', '{"b": 2, "a": 1}')
    assert same.agrees
    assert same.value == 1.0
    half = score("json", '{"a": 1, "b": 3}', '{"a": 1, "b": 2}')
    assert not half.agrees
    assert half.value == pytest.approx(0.5)
    assert not score("json", "not json", '{"a": 1}').agrees


def test_field_f1_counts_missing_and_extra_fields() -> None:
    assert json_field_f1({"a": 1}, {"a": 1, "b": 2}) == pytest.approx(2 / 3)


def test_text_agreement_uses_similarity_above_threshold() -> None:
    assert score("text", "a", "b", similarity=lambda x, y: 0.9, text_threshold=0.85).agrees
    assert not score("text", "a", "b", similarity=lambda x, y: 0.5, text_threshold=0.85).agrees
    assert score("text", " same ", "same").agrees


def test_shape_rules_bound_how_many_labels_there_may_be() -> None:
    answers = [f"intent {n}" for n in range(12)] * 5
    assert detect_shape(answers, rules=ShapeRules(max_labels=12)) == "label"
    assert detect_shape(answers, rules=ShapeRules(max_labels=11)) == "text"


def test_shape_rules_bound_how_often_each_label_is_seen() -> None:
    answers = ["refund", "billing"] * 3
    assert detect_shape(answers, rules=ShapeRules(min_count=3)) == "label"
    assert detect_shape(answers, rules=ShapeRules(min_count=4)) == "text"


def test_a_stray_answer_among_many_labels_keeps_the_task_label_like() -> None:
    answers = ["refund", "billing", "shipping"] * 40 + ["I am not sure, sorry"]
    assert detect_shape(answers) == "label"


def test_long_answers_are_not_labels_however_often_they_repeat() -> None:
    sentence = "Thank you for your message, a colleague will call you back within a day."
    answers = [sentence, "refund"] * 10
    assert detect_shape(answers) == "text"
    assert detect_shape(answers, rules=ShapeRules(max_chars=len(sentence))) == "label"


def test_json_answers_are_json_even_from_a_small_closed_set() -> None:
    answers = ['{"intent": "refund"}', '{"intent": "billing"}'] * 10
    assert detect_shape(answers) == "json"
