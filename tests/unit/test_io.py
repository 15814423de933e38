"""`mdkif.io`: the one atomic-write helper (text, bytes, JSON), and a failed write leaves the old file; the one\nline walker JSONL readers share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdkif.io import numbered_lines, write_atomic, write_json_atomic


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


def test_numbered_lines_skips_blank_lines_and_numbers_as_an_editor_does(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    # U+2028 inside a JSON string is not a line break in a file (str.splitlines would cut the row there).
    path.write_bytes('{"a": 1}\n\n  \n{"b": "x\u2028y"}\r\n{"c": 3}'.encode())
    rows = [(n, json.loads(line)) for n, line in numbered_lines(path)]
    assert rows == [(1, {"a": 1}), (4, {"b": "x\u2028y"}), (5, {"c": 3})]
