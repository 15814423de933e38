"""MedQA-USMLE, native jsonl: `{question, options{A..}, answer_idx, answer, meta_info, metamap_phrases}`.

The hub copy `GBaker/MedQA-USMLE-4-options` has the same fields, so both go through `parse_row`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.data.mcq.common import RowError, make_record, need, rows_from_jsonl, text
from mdkif.data.records import MCQRecord, make_id

BENCHMARK = "medqa"


def looks_like(sample: Any) -> bool:
    """True for a first jsonl row in MedQA's shape."""
    return isinstance(sample, dict) and "answer_idx" in sample and isinstance(sample.get("options"), dict)


def parse_row(row: Any) -> MCQRecord:
    """One MedQA row -> MCQRecord; the id hashes question and options (the native file has no id)."""
    need(row, "question", "options", "answer_idx")
    question = text(row, "question")
    raw = row["options"]
    if not isinstance(raw, dict) or not raw:
        raise RowError(f"field 'options' must be a non-empty object of letter -> text, got {raw!r}")
    options = {str(k).strip(): str(v).strip() for k, v in sorted(raw.items())}
    letter = str(row["answer_idx"]).strip()
    # `answer` repeats the right option's text: checking it catches files whose answer_idx was shifted.
    if letter in options and "answer" in row and str(row["answer"]).strip() != options[letter]:
        raise RowError(f"answer_idx {letter!r} is {options[letter]!r} but answer says {row['answer']!r}")
    return make_record(
        id=make_id(BENCHMARK, question, *options.values()),
        benchmark=BENCHMARK,
        question=question,
        options=options,
        answer=letter,
    )


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read a MedQA jsonl file; MedQA has no context, so `with_context` changes nothing."""
    return rows_from_jsonl(path, parse_row)
