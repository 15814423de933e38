"""Errors raised while reading data: always name the file and, where known, the line or record."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file is missing or a row in it is malformed."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
