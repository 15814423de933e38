"""MMLU medical subjects, native CSV without a header: `question,A,B,C,D,answer` (answer a letter).

One file per subject and split, named `<subject>_<split>.csv` (e.g. `anatomy_val.csv`). A path may be
one file or a folder of them. Ids carry subject, split and 0-based row index (`mmlu_med-anatomy-val-003`),
like MIRAGE's `anatomy-032`.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.data.mcq.common import LETTERS, RowError, make_record, open_text
from mdkif.data.records import MCQRecord

BENCHMARK = "mmlu_med"
SPLITS = ("auxiliary_train", "dev", "val", "test")
# The six biomedical subjects MIRAGE's MMLU-Med uses (what the hub loader reads by default).
MEDICAL_SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


def looks_like(sample: Any) -> bool:
    """True for a path to a CSV file or a folder holding CSV files."""
    return isinstance(sample, Path) and (
        sample.suffix == ".csv" or (sample.is_dir() and any(sample.glob("*.csv")))
    )


def subject_and_split(path: Path) -> tuple[str, str | None]:
    """`anatomy_val.csv` -> ("anatomy", "val"); a name without a split suffix keeps it all as subject."""
    stem = path.stem
    for split in SPLITS:
        if stem.endswith(f"_{split}"):
            return stem[: -len(split) - 1], split
    return stem, None


def parse_row(cells: list[str], *, subject: str, split: str | None, index: int) -> MCQRecord:
    """One CSV row -> MCQRecord with options A-D."""
    if len(cells) != 6:
        raise RowError(f"expected 6 columns (question,A,B,C,D,answer), got {len(cells)}")
    answer = cells[5].strip().upper()
    if answer not in LETTERS[:4]:
        raise RowError(f"answer must be one of A-D, got {cells[5]!r}")
    name = f"{subject}-{split}" if split else subject
    return make_record(
        id=f"{BENCHMARK}-{name}-{index:03d}",
        benchmark=BENCHMARK,
        question=cells[0].strip(),
        options={LETTERS[i]: cells[1 + i].strip() for i in range(4)},
        answer=answer,
    )


def load_file(path: Path) -> list[MCQRecord]:
    """Read one subject CSV; errors name the line where the bad row starts."""
    subject, split = subject_and_split(path)
    records = []
    with open_text(path) as fh:
        reader = csv.reader(fh)
        index = 0
        while True:
            # A quoted field may span lines: remember where the row starts, not where it ends.
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(path, f"bad CSV: {exc}", line=start) from None
            if not any(c.strip() for c in cells):
                continue
            try:
                records.append(parse_row(cells, subject=subject, split=split, index=index))
            except RowError as exc:
                raise DataError(path, str(exc), line=start) from None
            index += 1
    return records


def load(path: Path, *, with_context: bool = False) -> list[MCQRecord]:
    """Read one CSV or every CSV in a folder (sorted by name); MMLU has no context."""
    if not path.is_dir():
        return load_file(path)
    files = sorted(path.glob("*.csv"))
    if not files:
        raise DataError(path, "no *.csv files in this folder")
    return [record for file in files for record in load_file(file)]
