"""Atomic file writes: a temp file in the target's folder, then one rename, so a reader (or a resumed run)
sees the old file or the new one, never half of either. The one helper every artifact writer uses.

Also the one way line files are walked (`numbered_lines`), so every JSONL reader numbers lines alike."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` all or nothing; creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json_atomic(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """`obj` as JSON (non-JSON values via str), atomically."""
    return write_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line of a UTF-8 file, numbered as an editor does.

    What to do with a line that does not parse is the caller's: raise a DataError naming the line, or count
    it as a bad row.
    """
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if line.strip():
                yield n, line
