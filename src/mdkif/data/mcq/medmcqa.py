"""MedMCQA, native json lines: `{id, question, opa, opb, opc, opd, cop, exp, subject_name, choice_type}`.

`cop` is 1-based in the original release (1 = opa): checked on the dev sample, where every one of its 25
items is also in MIRAGE with the letter cop - 1 gives, and the first item's `exp` says "Ans: D" for cop 4.
The hub copy `openlifescienceai/medmcqa` stores it 0-based (a ClassLabel a..d), hence `cop_base`.
`exp` is never used as context: it states the answer.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mdkif.data.mcq.common import LETTERS, RowError, make_record, need, rows_from_jsonl, text
from mdkif.data.records import MCQRecord, make_id

BENCHMARK = "medmcqa"
OPTION_FIELDS = ("opa", "opb", "opc", "opd")


def looks_like(sample: Any) -> bool:
    """True for a first jsonl row in MedMCQA's shape."""
    return isinstance(sample, dict) and "cop" in sample and "opa" in sample


def parse_row(row: Any, *, cop_base: int = 1) -> MCQRecord:
    """One MedMCQA row -> MCQRecord; `cop_base` is 1 for the native files, 0 for the hub copy."""
    need(row, "question", *OPTION_FIELDS, "cop")
    question = text(row, "question")
    options = {
        LETTERS[i]: str(row[f] if row[f] is not None else "").strip() for i, f in enumerate(OPTION_FIELDS)
    }
    try:
        index = int(row["cop"]) - cop_base
    except (TypeError, ValueError):
        raise RowError(f"field 'cop' must be an integer, got {row['cop']!r}") from None
    if not 0 <= index < len(OPTION_FIELDS):
        # The official test split ships without answers (cop = -1 on the hub): not usable for scoring.
        raise RowError(f"cop {row['cop']!r} is outside {cop_base}..{cop_base + 3}")
    rid = str(row.get("id") or "").strip() or make_id(BENCHMARK, question)[len(BENCHMARK) + 1 :]
    return make_record(
        id=f"{BENCHMARK}-{rid}",
        benchmark=BENCHMARK,
        question=question,
        options=options,
        answer=LETTERS[index],
    )


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read a MedMCQA json-lines file (1-based `cop`); there is no context to add."""
    return rows_from_jsonl(path, partial(parse_row, cop_base=1))
