"""What a skill-data builder is: a source spec plus a generator of unified records.

A builder is one module in this package with two names:

    SPEC = SourceSpec(name="medquad", skills=("qa",), files=("medquad/medquad_answered.jsonl",))
    def build(ctx: BuildContext) -> Iterator[SkillRecord]: ...

and one line in `mdkif.data.builders.REGISTRY`. It reads its native files through the context's
readers (which count lines and route malformed rows to `ctx.bad_row`), makes every record through
`instructions.BuilderTask.record` / `skill_record` (which derive the id from the content and draw the
instruction by it), and never decides the split, de-duplication or exclusion: the build does those the
same way for every source.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdkif.data.errors import DataError
from mdkif.io import numbered_lines


@dataclass(frozen=True)
class SourceSpec:
    """A source data set: its name, the skills it feeds, and the files it reads (relative to the root)."""

    name: str
    skills: tuple[str, ...]
    files: tuple[str, ...]
    description: str = ""
    # Dataset-hub name for users who have hub access instead of local files (datasets.load_dataset).
    hub: str | None = None


@dataclass
class BadRow:
    path: str
    line: int | None
    message: str


@dataclass
class BuildContext:
    """Everything a builder may use: the source root, a seeded RNG, a size cap and the bad-row policy."""

    root: Path
    seed: int = 0
    skip_bad: bool = False
    # Cap per (source, task): keeps one huge task from drowning the rest; None = no cap.
    max_per_task: int | None = None
    bad_rows: list[BadRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def rng(self, name: str) -> random.Random:
        """A RNG seeded from the build seed and `name`, so each builder's choices are independent."""
        return random.Random(f"{self.seed}:{name}")

    def path(self, rel: str) -> Path:
        """Absolute path of a source file; a clear DataError when it is missing.

        `rel` is looked up under the root and under `root/skills`, so `--source` may name either the
        data root (holding `skills/` and `mcq/`) or its `skills/` folder.
        """
        for p in (self.root / rel, self.root / "skills" / rel):
            if p.exists():
                return p
        raise DataError(self.root / rel, "source file not found (is --source the data root?)")

    def bad_row(self, path: str | Path, line: int | None, message: str) -> None:
        """Report a malformed row: raise by default, or count it when the build runs with skip_bad."""
        if not self.skip_bad:
            raise DataError(path, f"malformed record: {message} (use --skip-bad to skip such rows)", line)
        self.bad_rows.append(BadRow(str(path), line, message))

    # --- readers: each yields (line_number, row) and sends undecodable rows to bad_row ---------------

    def read_jsonl(self, rel: str) -> Iterator[tuple[int, dict[str, Any]]]:
        p = self.path(rel)
        for n, raw in numbered_lines(p):
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                self.bad_row(p, n, f"invalid JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                self.bad_row(p, n, "expected a JSON object")
                continue
            yield n, row

    def read_json(self, rel: str) -> Any:
        p = self.path(rel)
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(p, f"invalid JSON ({exc.msg})", exc.lineno) from None

    def read_input_output_pairs(self, rel: str, roles: tuple[str, str]) -> Iterator[tuple[str, str]]:
        """(input, output) of each item of a JSON list of `{instruction, input, output}` objects, cleaned.

        `roles` name the two sides in the message for an item that lacks one (it is skipped, counted as bad).
        """
        p = self.path(rel)
        rows = self.read_json(rel)
        if not isinstance(rows, list):
            raise DataError(p, "expected a JSON list of {instruction, input, output} objects")
        for n, row in enumerate(rows, start=1):
            first = clean(row.get("input")) if isinstance(row, dict) else ""
            second = clean(row.get("output")) if isinstance(row, dict) else ""
            if not first or not second:
                self.bad_row(p, None, f"item {n}: missing 'input' ({roles[0]}) or 'output' ({roles[1]})")
                continue
            yield first, second

    def read_csv(self, rel: str, **kwargs: Any) -> Iterator[tuple[int, dict[str, str]]]:
        """Rows of a CSV with a header; the line number is the physical line the row starts on."""
        p = self.path(rel)
        with p.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, **kwargs)
            start = reader.line_num + 1
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    self.bad_row(p, start, "wrong number of fields")
                else:
                    yield start, row
                start = reader.line_num + 1


def clean(text: Any) -> str:
    """Collapse runs of whitespace (native files are full of hard wraps and indentation)."""
    return " ".join(str(text).split()) if text is not None else ""
