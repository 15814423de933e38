"""Exclusion lists: evaluation items that must never appear in training data.

A list is a `.txt` file (one entry a line; a line without spaces is an id, anything else a question
text; blank lines and `#` comments skipped) or a `.jsonl` file (one JSON string, or an object with
`id` and/or `question`/`text` - so an exported benchmark of `MCQRecord`s works as it is).

Ids match a record's `id` exactly. Texts match by containment after normalisation (lower case, runs of
anything but letters and digits -> one space, compared on word boundaries) against the record's
instruction + input, so a benchmark question pasted into a longer prompt is still caught. Texts of
fewer than `MIN_WORDS` words (exam stems like "Insulin:") are not matched as text - they would drop every
record that mentions insulin - only their ids are; the build reports how many were ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mdkif.data.errors import DataError
from mdkif.data.records import SkillRecord

MIN_WORDS = 5
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics collapsed to one space, trimmed."""
    return _NON_WORD.sub(" ", text.lower()).strip()


@dataclass
class Exclusions:
    """Excluded ids and question texts, indexed so that checking 100k records stays fast."""

    ids: set[str] = field(default_factory=set)
    # Each text is filed under its longest word (usually a rare one): a record is only compared with
    # the texts whose anchor word it contains, instead of with every text.
    by_anchor: dict[str, list[str]] = field(default_factory=dict)
    # Texts too short to match safely, left out (their ids, if any, still apply).
    short_texts: int = 0

    def add_text(self, text: str) -> None:
        norm = normalise(text)
        words = norm.split()
        anchor = max(words, key=len)
        self.by_anchor.setdefault(anchor, []).append(norm)

    def __len__(self) -> int:
        return len(self.ids) + sum(len(v) for v in self.by_anchor.values())

    def matches(self, record: SkillRecord) -> bool:
        """True when the record's id is excluded or its instruction+input contains an excluded text."""
        if record.id in self.ids:
            return True
        if not self.by_anchor:
            return False
        norm = normalise(f"{record.instruction} {record.input}")
        hits = self.by_anchor.keys() & set(norm.split())
        if not hits:
            return False
        padded = f" {norm} "
        return any(f" {text} " in padded for anchor in hits for text in self.by_anchor[anchor])


def _entries(path: Path) -> Iterable[tuple[str | None, str | None]]:
    """(id, text) for each entry of one exclusion file."""
    with path.open(encoding="utf-8") as fh:
        for n, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or (path.suffix != ".jsonl" and line.startswith("#")):
                continue
            if path.suffix != ".jsonl":
                yield (line, None) if len(line.split()) == 1 else (None, line)
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg})", n) from None
            if isinstance(item, str):
                yield (item, None) if len(item.split()) == 1 else (None, item)
            elif isinstance(item, dict) and (item.get("id") or item.get("question") or item.get("text")):
                text = item.get("question") or item.get("text")
                yield (str(item["id"]) if item.get("id") else None), (str(text) if text else None)
            else:
                raise DataError(path, "expected a string or an object with 'id' and/or 'question'", n)


def load_exclusions(paths: Iterable[str | Path]) -> Exclusions:
    """Read exclusion lists; a missing file or a malformed line is a DataError naming file:line."""
    ex = Exclusions()
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(p, "exclusion list not found")
        for rid, text in _entries(p):
            if rid:
                ex.ids.add(rid)
            if text and len(normalise(text).split()) < MIN_WORDS:
                ex.short_texts += 1
            elif text:
                ex.add_text(text)
    return ex
