"""BioASQ Task B, native json: `{"questions": [{id, body, type, exact_answer, snippets, ...}]}`.

Only `type == "yesno"` questions are benchmark items (MIRAGE's BioASQ-Y/N); the factoid, list and
summary questions in the same file are skipped, not errors. `exact_answer` is "yes"/"no", and some
years wrap it in a list. Options are the words yes/no. With `with_context` the gold snippets become the
context; MIRAGE removes them, so the default is without.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import YES_NO, RowError, make_record, need, read_json, text, where
from mdkif.data.records import MCQRecord

BENCHMARK = "bioasq"


def looks_like(sample: Any) -> bool:
    """True for a parsed json file in BioASQ's shape (a `questions` list)."""
    return isinstance(sample, dict) and isinstance(sample.get("questions"), list)


def exact_answer(value: Any) -> str:
    """Unwrap `"yes"`, `["yes"]` or `[["yes"]]` to the lower-case word."""
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise RowError(f"exact_answer must be 'yes' or 'no', got {value!r}")
    return value.strip().lower()


def parse_question(q: dict[str, Any], *, with_context: bool = False) -> MCQRecord:
    """One yes/no BioASQ question -> MCQRecord."""
    need(q, "id", "body", "exact_answer")
    context = None
    if with_context:
        snippets = q.get("snippets") or []
        context = "\n".join(str(s.get("text", "")).strip() for s in snippets if isinstance(s, dict)) or None
    return make_record(
        id=f"{BENCHMARK}-{q['id']}",
        benchmark=BENCHMARK,
        question=text(q, "body"),
        options=dict(YES_NO),
        answer=exact_answer(q["exact_answer"]),
        context=context,
    )


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read the yes/no questions of a BioASQ json file; errors name the question id."""
    data = read_json(path)
    if not looks_like(data):
        raise DataError(path, "expected BioASQ json with a 'questions' list")
    records = []
    for index, q in enumerate(data["questions"]):
        key = str(q.get("id", f"questions[{index}]")) if isinstance(q, dict) else f"questions[{index}]"
        try:
            need(q, "type")
            if q["type"] != "yesno":
                continue
            records.append(parse_question(q, with_context=with_context))
        except RowError as exc:
            raise DataError(path, f"{where(key)}{exc}") from None
    return records
