"""Every route/tune YAML we ship loads into its schema (and opens with the command that runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdkif.config import load_config, load_yaml
from mdkif.experiments.unseen import ExperimentConfig
from mdkif.routing.config import RouteConfig
from mdkif.tuning.search import SearchConfig

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "route").glob("*.yaml")) + [
    REPO / "tune" / n for n in ("router_search.yaml", "adalora_search.yaml", "unseen_task.yaml")
]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# mdkif ") and path.name in first
    if path.parent.name == "route":
        load_config(path, RouteConfig)
    elif path.name == "unseen_task.yaml":
        load_config(path, ExperimentConfig)
    else:
        cfg = load_config(path, SearchConfig)
        base = REPO / cfg.base
        assert base.is_file(), f"{path}: base {cfg.base} missing"
        if cfg.kind == "router":
            load_config(base, RouteConfig, cfg.base_overrides)
        else:
            from mdkif.skills.config import SkillsStage

            load_config(base, SkillsStage, cfg.base_overrides)
            assert load_yaml(base)["adapter"]["kind"] == "adalora"


def test_at_least_the_promised_configs_ship():
    assert len(SHIPPED) >= 6 and all(p.is_file() for p in SHIPPED)


def test_points_to_evaluate_must_set_the_space_keys(tmp_path):
    from mdkif.config import ConfigError

    path = tmp_path / "search.yaml"
    path.write_text(
        "kind: router\nbase: route/pubmedqa_gradient.yaml\n"
        "space:\n  gradient.lr: {type: loguniform, low: 0.001, high: 1.0}\n"
        "  router.temperature: {type: loguniform, low: 0.1, high: 10.0}\n"
        "searcher: {name: cmaes, points_to_evaluate: [{gradient: {lr: 0.01}, router.temperature: 1.0}, "
        "{gradient.lr: 0.01}]}\n"
    )
    with pytest.raises(ConfigError, match=r"points_to_evaluate\[1\].*router.temperature"):
        load_config(path, SearchConfig)


def test_random_search_runs_the_given_points_as_nested_configs(tmp_path):
    from mdkif.tuning.search import make_searcher

    path = tmp_path / "search.yaml"
    path.write_text(
        "kind: router\nbase: route/pubmedqa_gradient.yaml\n"
        "space:\n  gradient.lr: {type: loguniform, low: 0.001, high: 1.0}\n"
        "  router.temperature: {type: loguniform, low: 0.1, high: 10.0}\n"
        "searcher: {name: random, points_to_evaluate: [{gradient.lr: 0.01, router: {temperature: 2.0}}]}\n"
    )
    searcher = make_searcher(load_config(path, SearchConfig))
    assert searcher._points_to_evaluate == [{"gradient": {"lr": 0.01}, "router": {"temperature": 2.0}}]
