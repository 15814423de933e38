"""The strict answer parser for generated text: an explicit `Answer: X` or nothing (MIRAGE's rule).

A key is accepted only right after an answer marker (`Answer: B`, `answer is (C)`, `answer: yes`). The
parser never falls back to "the first standalone letter" (the flaw that makes MedAdapt-LLM's numbers
noise): text without a marker is *unparsable*, and text whose markers name two different keys, or one
marker naming "A or B", is *ambiguous*. Both count as wrong and are reported, never guessed.

Lower-case letters are accepted only when they cannot be an article or the start of a word
(`answer: b`, `answer is (c).`), so "the answer is a bacterial infection" stays unparsable.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "ambiguous", "unparsable"]

# "Answer: X", "answer is X", "final answer is: (X)", "answer would be option X", "**Answer:** X".
_MARKER = re.compile(
    r"answer\W{0,3}(?:\s*(?:is|would\s+be|will\s+be|should\s+be)\b)?\s*[:\-]?\s*\**\s*(?:option\s+|choice\s+)?",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"\(?\s*([A-Za-z]+)\s*\)?")
# A second key joined to the first ("A or B", "A/B", "A and C") makes one marker ambiguous.
_JOINED = re.compile(r"\s*(?:or|and|/|,|&)\s*\(?\s*([A-Za-z]+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    """What the parser made of a generation: the option key, or None with the reason."""

    answer: str | None
    status: Status


def _key_at(text: str, pos: int, keys: Collection[str], lettered: bool) -> tuple[str | None, int]:
    """The option key starting at `pos` (after a marker) and where it ends, or (None, pos)."""
    m = _TOKEN.match(text, pos)
    if not m:
        return None, pos
    word = m.group(1)
    end = m.end()
    if lettered:
        if len(word) != 1 or word.upper() not in keys:
            return None, pos
        if word.islower():
            # A lone lower-case letter followed by more words is probably an article ("is a disease").
            bracketed = m.group(0).startswith("(")
            tail = text[end:]
            if not bracketed and tail.strip() and not re.match(r"\s*[.,;:)\n]|\s*$", tail):
                return None, pos
        return word.upper(), end
    lowered = word.lower()
    return (lowered, end) if lowered in keys else (None, pos)


def parse_answer(text: str, keys: Collection[str]) -> Parsed:
    """Find the answer key in `text`, given the item's option keys (letters, or yes/no/maybe words).

    Every answer marker in the text is read; they must all name the same key. A marker followed by
    something that is not a key ("Answer: I am not sure") is ignored rather than guessed.
    """
    keys = {k if len(k) > 1 else k.upper() for k in keys}
    lettered = all(len(k) == 1 for k in keys)
    if not lettered:
        keys = {k.lower() for k in keys}
    found: list[str] = []
    for m in _MARKER.finditer(text):
        key, end = _key_at(text, m.end(), keys, lettered)
        if key is None:
            continue
        joined = _JOINED.match(text, end)
        if joined:
            other, _ = _key_at(text, joined.start(1), keys, lettered)
            if other is not None and other != key:
                return Parsed(None, "ambiguous")
        found.append(key)
    if not found:
        return Parsed(None, "unparsable")
    if len(set(found)) > 1:
        return Parsed(None, "ambiguous")
    return Parsed(found[0], "ok")
