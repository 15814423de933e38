"""A Tune search space is checked against its base config's schema before Ray starts: a misspelt key or an
end of a domain the schema refuses stops `mdkif tune` with the file, the key and the value named."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mdkif.config import ConfigError, load_config, load_yaml
from mdkif.tuning.search import SearchConfig, check_space

REPO = Path(__file__).resolve().parents[2]


def _cfg(**space) -> SearchConfig:
    """tune/adalora_search.yaml with `space` added to its search space."""
    data = load_yaml(REPO / "tune" / "adalora_search.yaml")
    data["space"].update(space)
    return SearchConfig.model_validate(data)


def test_every_shipped_search_space_is_valid():
    for path in sorted((REPO / "tune").glob("*.yaml")):
        if "--experiment" in path.read_text().splitlines()[0]:
            continue  # the unseen-task experiment, not a search
        check_space(load_config(path, SearchConfig), str(path))


def test_a_misspelt_key_is_named_with_the_file():
    cfg = _cfg(**{"optim.lrr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})
    with pytest.raises(ConfigError) as err:
        check_space(cfg, "tune/adalora_search.yaml")
    msg = str(err.value)
    assert "tune/adalora_search.yaml: space key 'optim.lrr'" in msg and "field 'optim.lrr'" in msg
    assert "unknown field" in msg


def test_an_end_the_schema_refuses_is_named_with_its_value():
    cfg = _cfg(**{"adapter.r": {"type": "randint", "low": 0, "high": 8}})
    with pytest.raises(ConfigError, match=r"space key 'adapter.r' = 0 .*field 'adapter.r'"):
        check_space(cfg)


def test_mdkif_tune_stops_before_ray(tmp_path, monkeypatch):
    from mdkif.cli import app

    text = (REPO / "tune" / "adalora_search.yaml").read_text().replace("optim.lr:", "optim.lrr:")
    text = text.replace("base: train/skills_demo.yaml", f"base: {REPO / 'train' / 'skills_demo.yaml'}")
    bad = tmp_path / "search.yaml"
    bad.write_text(text)
    import ray

    started = []
    monkeypatch.setattr(ray, "init", lambda *a, **k: started.append(1))
    result = CliRunner().invoke(app, ["tune", str(bad)])
    assert result.exit_code != 0 and not started
    assert "space key 'optim.lrr'" in str(result.exception) + result.output
