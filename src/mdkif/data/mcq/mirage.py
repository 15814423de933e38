"""The MIRAGE benchmark json (MedRAG): `{source: {id: {question, options{A..}, answer}}}`.

MIRAGE bundles medqa, medmcqa, mmlu, pubmedqa and bioasq with lettered options. Sources map to our
benchmark names (mmlu -> mmlu_med) and ids keep MIRAGE's key (`medqa-0035`, `mmlu_med-anatomy-032`,
MedMCQA's uuid, PubMedQA's pmid), so they match the native loaders' ids where the native file has ids.
PubMedQA and BioASQ options become the words yes/no/maybe, as in their native loaders. MIRAGE carries
no contexts (its rule), so `with_context` changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import RowError, make_record, need, read_json, text, where
from mdkif.data.records import MCQRecord

# MIRAGE source key -> our benchmark name.
SOURCES: dict[str, str] = {
    "medqa": "medqa",
    "medmcqa": "medmcqa",
    "mmlu": "mmlu_med",
    "pubmedqa": "pubmedqa",
    "bioasq": "bioasq",
}
WORD_ANSWERS = {"pubmedqa", "bioasq"}


def looks_like(sample: Any) -> bool:
    """True for a parsed json file whose top-level keys are all MIRAGE sources."""
    return isinstance(sample, dict) and bool(sample) and set(sample) <= set(SOURCES)


def parse_item(source: str, key: str, item: Any) -> MCQRecord:
    """One MIRAGE item of `source` -> MCQRecord under our benchmark name."""
    need(item, "question", "options", "answer")
    benchmark = SOURCES[source]
    raw = item["options"]
    if not isinstance(raw, dict) or not raw:
        raise RowError(f"field 'options' must be a non-empty object of letter -> text, got {raw!r}")
    options = {str(k).strip(): str(v).strip() for k, v in sorted(raw.items())}
    answer = str(item["answer"]).strip()
    if answer not in options:
        raise RowError(f"answer {answer!r} is not one of the options {sorted(options)}")
    if benchmark in WORD_ANSWERS:
        answer = options[answer].lower()
        options = {v.lower(): v.lower() for v in options.values()}
    return make_record(
        id=f"{benchmark}-{key}",
        benchmark=benchmark,
        question=text(item, "question"),
        options=options,
        answer=answer,
    )


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read a MIRAGE benchmark json: every source it holds, in file order; errors name source/key."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, f"expected an object of source -> items, got {type(data).__name__}")
    records = []
    for source, items in data.items():
        if source not in SOURCES:
            raise DataError(path, f"unknown MIRAGE source {source!r}; expected one of {', '.join(SOURCES)}")
        if not isinstance(items, dict):
            raise DataError(path, f"{where(source)}expected an object of id -> item")
        for key, item in items.items():
            try:
                records.append(parse_item(source, str(key), item))
            except RowError as exc:
                raise DataError(path, f"{where(f'{source}/{key}')}{exc}") from None
    return records
