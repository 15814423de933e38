"""The strict answer parser: explicit markers only; ambiguity and absence are reported, never guessed."""

from __future__ import annotations

import pytest

from mdkif.evaluation.parsing import parse_answer

LETTERS = ["A", "B", "C", "D"]
YNM = ["yes", "no", "maybe"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Answer: B", "B"),
        ("The answer is (C).", "C"),
        ("answer: d", "D"),
        ("So the answer is (a).", "A"),
        ("**Answer:** C. Aspirin", "C"),
        ("The final answer is option B, because of the rash.", "B"),
        ("Answer: A\nExplanation: A is the first-line drug.", "A"),
        ("Answer: B. Later: the answer is B.", "B"),
    ],
)
def test_correct_answers_are_parsed(text: str, expected: str) -> None:
    parsed = parse_answer(text, LETTERS)
    assert (parsed.answer, parsed.status) == (expected, "ok")


@pytest.mark.parametrize(
    "text",
    ["Answer: A or B", "Answer: A. On reflection, the answer is C.", "answer is B/C", "Answer: A, D"],
)
def test_two_different_letters_are_ambiguous(text: str) -> None:
    parsed = parse_answer(text, LETTERS)
    assert (parsed.answer, parsed.status) == (None, "ambiguous")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "B",  # a bare letter without a marker is never taken (MedAdapt-LLM's flaw)
        "I think B is right",
        "The answer is a bacterial infection.",  # lower-case article, not option A
        "Answer: E",  # not one of the options
        "Answer: I am not sure.",
        ":::::::",
    ],
)
def test_unparsable_outputs(text: str) -> None:
    parsed = parse_answer(text, LETTERS)
    assert (parsed.answer, parsed.status) == (None, "unparsable")


@pytest.mark.parametrize(
    ("text", "expected", "status"),
    [
        ("Answer: yes", "yes", "ok"),
        ("The answer is No.", "no", "ok"),
        ("answer: MAYBE", "maybe", "ok"),
        ("Answer: yes or no", None, "ambiguous"),
        ("Answer: A", None, "unparsable"),  # letters mean nothing for yes/no/maybe items
        ("yes", None, "unparsable"),
    ],
)
def test_yes_no_maybe(text: str, expected: str | None, status: str) -> None:
    parsed = parse_answer(text, YNM)
    assert (parsed.answer, parsed.status) == (expected, status)
