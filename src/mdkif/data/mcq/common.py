"""Helpers every benchmark loader shares: reading native files and turning a row into an MCQRecord.

Loaders never let a bad row through silently: every failure becomes a DataError that names the file and
the line (jsonl, csv) or the record key (json), because evaluation numbers computed over a silently
shortened benchmark are wrong in a way nobody notices.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from mdkif.data.errors import DataError
from mdkif.data.records import MCQRecord
from mdkif.io import numbered_lines

LETTERS = "ABCDEFGHIJ"

# Research QA (PubMedQA, BioASQ) answers with the word itself; using it as the option key keeps the
# records identical whether they come from the native file or from MIRAGE's lettered copy.
YES_NO_MAYBE: dict[str, str] = {"yes": "yes", "no": "no", "maybe": "maybe"}
YES_NO: dict[str, str] = {"yes": "yes", "no": "no"}


class RowError(ValueError):
    """A problem with one row; the loader adds the file and line when it turns this into a DataError."""


def where(key: str | None) -> str:
    """Prefix naming a json record by its key (DataError's `line` is only for line-based files)."""
    return f"record {key!r}: " if key is not None else ""


def make_record(**fields: Any) -> MCQRecord:
    """Build an MCQRecord, turning pydantic's validation error into a one-line RowError."""
    try:
        return MCQRecord(**fields)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
        raise RowError(msgs) from None


def need(row: Any, *keys: str) -> None:
    """Fail unless `row` is a mapping holding every one of `keys`."""
    if not isinstance(row, dict):
        raise RowError(f"expected an object, got {type(row).__name__}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise RowError(f"missing field(s) {', '.join(missing)}")


def text(row: dict[str, Any], key: str) -> str:
    """A required non-empty string field."""
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; bad JSON is a DataError there."""
    if not path.is_file():
        raise DataError(path, "file not found")
    for lineno, line in numbered_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON: {exc.msg}", line=lineno) from None
        yield lineno, obj


def read_json(path: Path) -> Any:
    """Parse a whole json file, naming the line of a syntax error."""
    with open_text(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not valid JSON: {exc.msg}", line=exc.lineno) from None


def open_text(path: Path) -> TextIO:
    """Open a UTF-8 file, or fail with a DataError naming it."""
    if not path.is_file():
        raise DataError(path, "file not found")
    return path.open(encoding="utf-8", newline="")


def rows_from_jsonl(path: Path, parse: Callable[[Any], MCQRecord]) -> list[MCQRecord]:
    """Parse every line of a jsonl file with `parse`, re-raising row problems with the line number."""
    records = []
    for lineno, row in iter_jsonl(path):
        try:
            records.append(parse(row))
        except RowError as exc:
            raise DataError(path, str(exc), line=lineno) from None
    return records
