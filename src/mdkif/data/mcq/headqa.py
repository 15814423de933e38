"""HEAD-QA (English), native json: `{version, language, exams: {name: {name, category, year, data: [...]}}}`.

Each item is `{qid, qtext, ra, answers: [{aid, atext}], image}`; `ra` is the `aid` of the right answer.
Answers are lettered A.. in `aid` order, so the letter does not depend on list order. Train exams have 5
answers and dev exams 4. About 2.5% of items refer to an image that is not in the text release; they are
kept (published HEAD-QA numbers include them) and are unanswerable from the text alone.
A flat list of items, each carrying its exam `name` (the hub copy's rows), is accepted too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import LETTERS, RowError, make_record, need, read_json, text, where
from mdkif.data.records import MCQRecord

BENCHMARK = "headqa"


def looks_like(sample: Any) -> bool:
    """True for a parsed json file with HEAD-QA's nested `exams` structure."""
    return isinstance(sample, dict) and isinstance(sample.get("exams"), dict)


def parse_item(item: Any, *, exam: str) -> MCQRecord:
    """One HEAD-QA item -> MCQRecord; the id is exam name plus the question's id in the exam."""
    need(item, "qid", "qtext", "ra", "answers")
    answers = item["answers"]
    if not isinstance(answers, list) or len(answers) < 2 or len(answers) > len(LETTERS):
        raise RowError(f"field 'answers' must be a list of 2..{len(LETTERS)} answers")
    try:
        by_aid = sorted((int(a["aid"]), str(a["atext"]).strip()) for a in answers)
        right = int(item["ra"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RowError(f"answers need integer 'aid' and 'atext', and 'ra' an integer aid ({exc})") from None
    aids = [aid for aid, _ in by_aid]
    if len(set(aids)) != len(aids):
        raise RowError(f"duplicate aids {aids}")
    if right not in aids:
        raise RowError(f"ra {item['ra']!r} is not one of the aids {aids}")
    return make_record(
        id=f"{BENCHMARK}-{exam}-{item['qid']}",
        benchmark=BENCHMARK,
        question=text(item, "qtext"),
        options={LETTERS[i]: atext for i, (_, atext) in enumerate(by_aid)},
        answer=LETTERS[aids.index(right)],
    )


def exam_items(path: Path, data: Any) -> list[tuple[str, Any]]:
    """(exam name, item) pairs from either the nested `exams` file or a flat list of items."""
    if isinstance(data, list):
        return [(str(item.get("name", "exam")) if isinstance(item, dict) else "exam", item) for item in data]
    if not looks_like(data):
        raise DataError(path, "expected HEAD-QA json with an 'exams' object (or a list of items)")
    pairs = []
    for key, exam in data["exams"].items():
        if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
            raise DataError(path, f"{where(key)}exam must be an object with a 'data' list")
        pairs.extend((str(exam.get("name", key)), item) for item in exam["data"])
    return pairs


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read a HEAD-QA json file; errors name the exam and question id. There is no context."""
    records = []
    for index, (exam, item) in enumerate(exam_items(path, read_json(path))):
        try:
            records.append(parse_item(item, exam=exam))
        except RowError as exc:
            qid = item.get("qid", f"#{index}") if isinstance(item, dict) else f"#{index}"
            raise DataError(path, f"{where(f'{exam}/{qid}')}{exc}") from None
    return records
