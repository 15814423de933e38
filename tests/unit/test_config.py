"""Config loading: overrides, and errors that name the file, the field and what was expected."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from mdkif.config import ConfigError, StrictModel, apply_overrides, load_config


class Inner(StrictModel):
    lr: float = Field(1e-3, gt=0)
    mode: Literal["a", "b"] = "a"


class Outer(StrictModel):
    name: str
    steps: int = 10
    inner: Inner = Inner()
    skills: list[str] = []


def write(tmp_path, text: str):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_loads_with_nested_overrides(tmp_path):
    p = write(tmp_path, "name: x\ninner:\n  lr: 0.1\n")
    cfg = load_config(p, Outer, ["inner.mode=b", "steps=3", "skills=[qa, ner]", "inner.lr=2e-4"])
    assert cfg.inner.mode == "b" and cfg.steps == 3 and cfg.skills == ["qa", "ner"]
    assert cfg.inner.lr == pytest.approx(2e-4)


def test_unknown_field_is_named_with_file(tmp_path):
    p = write(tmp_path, "name: x\ninner:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, Outer)
    msg = str(err.value)
    assert str(p) in msg and "'inner.lrr'" in msg and "unknown field" in msg


def test_wrong_type_names_field_expected_and_value(tmp_path):
    p = write(tmp_path, "name: x\nsteps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, Outer)
    msg = str(err.value)
    assert "field 'steps'" in msg and "valid integer" in msg and "'many'" in msg


def test_constraint_and_literal_errors(tmp_path):
    p = write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError, match=r"field 'inner.lr': Input should be greater than 0"):
        load_config(p, Outer, ["inner.lr=-1"])
    with pytest.raises(ConfigError, match=r"field 'inner.mode': Input should be 'a' or 'b'"):
        load_config(p, Outer, ["inner.mode=c"])


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'name': Field required"):
        load_config(write(tmp_path, "steps: 1\n"), Outer)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed\n"), Outer)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), Outer)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="is not a mapping"):
        apply_overrides({"steps": 3}, ["steps.x=1"])


def test_override_indexes_into_lists():
    data = {"corpora": [{"kind": "a"}, {"kind": "b"}]}
    apply_overrides(data, ["corpora.1.max_docs=5", "corpora.0=x"])
    assert data == {"corpora": ["x", {"kind": "b", "max_docs": 5}]}
    with pytest.raises(ConfigError, match="'2' is not an index of a 2-item list"):
        apply_overrides(data, ["corpora.2.kind=c"])
