"""Benchmarks from a dataset hub (`hub:<repo>[:<config>]`), for users who have hub access.

Each known repo maps its rows onto the native loader's row parser, so hub and file records are the same
shape and the same ids where the hub keeps the native ids. Not exercised by the offline tests (nothing
downloads in tests): the field names below follow each dataset's card.
Differences from the native files that matter:
- MedMCQA on the hub stores `cop` 0-based (ClassLabel a..d); its test split has no answers (cop -1).
- PubMedQA `pqa_labeled` puts all 1000 labeled items in `train`, the official 500-item test set included.
- MMLU without a config reads the six MIRAGE medical subjects, one config each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq import headqa, medmcqa, medqa, mmlu, pubmedqa
from mdkif.data.mcq.common import LETTERS, RowError
from mdkif.data.records import MCQRecord

# (row, index in its config, config, split, with_context) -> record
RowParser = Callable[[dict[str, Any], int, str | None, str, bool], MCQRecord]


def _medqa_row(row: dict[str, Any], index: int, config: str | None, split: str, ctx: bool) -> MCQRecord:
    return medqa.parse_row(row)  # same fields as the native jsonl


def _medmcqa_row(row: dict[str, Any], index: int, config: str | None, split: str, ctx: bool) -> MCQRecord:
    return medmcqa.parse_row(row, cop_base=0)


def _pubmedqa_row(row: dict[str, Any], index: int, config: str | None, split: str, ctx: bool) -> MCQRecord:
    # The hub nests the native CONTEXTS under context.contexts and renames the other fields.
    context = row.get("context") or {}
    item = {
        "QUESTION": row.get("question"),
        "CONTEXTS": context.get("contexts", []),
        "final_decision": row.get("final_decision"),
    }
    return pubmedqa.parse_item(str(row.get("pubid")), item, with_context=ctx)


def _mmlu_row(row: dict[str, Any], index: int, config: str | None, split: str, ctx: bool) -> MCQRecord:
    # The hub has `choices` (a list) and `answer` as an index 0..3 instead of the CSV's letter.
    answer = row.get("answer")
    if not isinstance(answer, int) or not 0 <= answer < 4:
        raise RowError(f"answer must be an integer 0..3, got {answer!r}")
    cells = [str(row.get("question", "")), *map(str, row.get("choices") or []), LETTERS[answer]]
    return mmlu.parse_row(cells, subject=str(row.get("subject") or config), split=split, index=index)


def _headqa_row(row: dict[str, Any], index: int, config: str | None, split: str, ctx: bool) -> MCQRecord:
    return headqa.parse_item(row, exam=str(row.get("name", "exam")))  # flat rows carry their exam name


@dataclass(frozen=True)
class HubSource:
    """How to read one hub repo: our benchmark name, default config(s) and split, and a row parser."""

    benchmark: str
    configs: tuple[str | None, ...]
    split: str
    parse: RowParser


# One line per hub repo (keys lower-case).
HUB: dict[str, HubSource] = {
    "gbaker/medqa-usmle-4-options": HubSource("medqa", (None,), "test", _medqa_row),
    "openlifescienceai/medmcqa": HubSource("medmcqa", (None,), "validation", _medmcqa_row),
    "qiaojin/pubmedqa": HubSource("pubmedqa", ("pqa_labeled",), "train", _pubmedqa_row),
    "cais/mmlu": HubSource("mmlu_med", mmlu.MEDICAL_SUBJECTS, "test", _mmlu_row),
    "dvilares/head_qa": HubSource("headqa", ("en",), "test", _headqa_row),
}


def load_hub(spec: str, *, split: str | None = None, with_context: bool = False) -> list[MCQRecord]:
    """Load `hub:<repo>[:<config>]` with `datasets.load_dataset` and convert every row; needs hub access."""
    name = spec.removeprefix("hub:")
    repo, _, config = name.partition(":")
    source = HUB.get(repo.lower())
    if source is None:
        raise DataError(spec, f"unknown hub benchmark {repo!r}; known: {', '.join(HUB)}")
    split = split or source.split
    configs = (config,) if config else source.configs
    from datasets import load_dataset  # imported here: `datasets` is slow to import and only needed now

    records = []
    for cfg in configs:
        where = f"hub:{repo}" + (f":{cfg}" if cfg else "") + f"[{split}]"
        try:
            rows = load_dataset(repo, cfg, split=split)
        except Exception as exc:  # network, auth or a wrong name: one clear line for the CLI
            raise DataError(where, f"could not load from the hub: {exc}") from exc
        for index, row in enumerate(rows):
            try:
                records.append(source.parse(row, index, cfg, split, with_context))
            except RowError as exc:
                raise DataError(where, f"row {index}: {exc}") from None
    return records
