"""`mdkif.io`: the one atomic-write helper (text, bytes, JSON), and a failed write leaves the old file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.io import write_atomic, write_json_atomic


def test_writes_text_bytes_and_json_creating_the_folder(tmp_path: Path) -> None:
    assert write_atomic(tmp_path / "a" / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert json.loads(write_json_atomic(tmp_path / "c.json", {"p": Path("x")}).read_text()) == {"p": "x"}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.bin", "c.json", "t.txt"]  # no temp left


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = write_atomic(tmp_path / "m.json", "old")
    with pytest.raises(TypeError):
        write_atomic(path, 42)  # type: ignore[arg-type]
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.json"]
