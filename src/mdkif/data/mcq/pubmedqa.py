"""PubMedQA-L, native json: `{pmid: {QUESTION, CONTEXTS[], LABELS, MESHES, LONG_ANSWER, final_decision}}`.

Options are the words yes/no/maybe. MIRAGE's rule (PubMedQA*) is no gold context: the abstract nearly
gives the answer away, so `with_context` defaults to False and is for reading-comprehension runs only.
LONG_ANSWER is never used: it is the abstract's conclusion, i.e. the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import YES_NO_MAYBE, RowError, make_record, need, read_json, text, where
from mdkif.data.records import MCQRecord

BENCHMARK = "pubmedqa"


def looks_like(sample: Any) -> bool:
    """True for a parsed json file in PubMedQA's shape (pmid -> item with QUESTION)."""
    if not isinstance(sample, dict) or not sample:
        return False
    first = next(iter(sample.values()))
    return isinstance(first, dict) and "QUESTION" in first and "final_decision" in first


def parse_item(pmid: str, item: Any, *, with_context: bool = False) -> MCQRecord:
    """One PubMedQA item -> MCQRecord with options yes/no/maybe and the decision as answer."""
    need(item, "QUESTION", "final_decision")
    decision = str(item["final_decision"]).strip().lower()
    context = None
    if with_context:
        contexts = item.get("CONTEXTS")
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise RowError("field 'CONTEXTS' must be a list of strings")
        context = "\n".join(c.strip() for c in contexts) or None
    return make_record(
        id=f"{BENCHMARK}-{pmid}",
        benchmark=BENCHMARK,
        question=text(item, "QUESTION"),
        options=dict(YES_NO_MAYBE),
        answer=decision,
        context=context,
    )


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read a PubMedQA-L json file; errors name the pmid."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"expected an object of pmid -> item, got {type(data).__name__}")
    records = []
    for pmid, item in data.items():
        try:
            records.append(parse_item(str(pmid), item, with_context=with_context))
        except RowError as exc:
            raise DataError(path, f"{where(str(pmid))}{exc}") from None
    return records
