"""The reference run's row selection: which rows a config yields, which need the routers stage, bad rows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mdkif.experiments.reference import ReferenceConfig


def _cfg(**extra) -> ReferenceConfig:
    return ReferenceConfig.model_validate({"tasks": [{"name": "healthver"}], **extra})


def test_default_rows_include_every_router_and_arrow() -> None:
    cfg = _cfg(routers={"cmaes_ks": [20, 5]})
    assert cfg.selected_rows() == [
        "base",
        "best_single",
        "uniform",
        "routed_gradient",
        "routed_cmaes_k5",
        "routed_cmaes_k20",
        "routed_arrow",
        "task_lora",
    ]
    assert cfg.needs_fits()


def test_task_lora_row_needs_its_stage_not_the_routers() -> None:
    assert "task_lora" not in _cfg(task_lora_config=None).selected_rows()
    cfg = _cfg(rows=["base", "task_lora"])
    assert cfg.selected_rows() == ["base", "task_lora"] and not cfg.needs_fits()


def test_task_free_rows_skip_the_routers_stage() -> None:
    cfg = _cfg(rows=["routed_arrow", "base", "uniform"])
    assert cfg.selected_rows() == ["base", "uniform", "routed_arrow"]  # table order, not the given order
    assert not cfg.needs_fits()
    assert _cfg(rows=["base", "routed_cmaes_k5"]).needs_fits()


def test_no_arrow_row_when_arrow_is_null() -> None:
    assert "routed_arrow" not in _cfg(arrow=None).selected_rows()
    with pytest.raises(ValidationError, match=r"field 'rows': unknown row\(s\) \['routed_arrow'\]"):
        _cfg(arrow=None, rows=["base", "routed_arrow"])


def test_bad_rows_are_named() -> None:
    with pytest.raises(ValidationError, match=r"unknown row\(s\) \['routed_cmaes_k7'\]"):
        _cfg(rows=["base", "routed_cmaes_k7"])
    with pytest.raises(ValidationError, match="must include 'base'"):
        _cfg(rows=["uniform"])


def test_a_router_saved_before_an_interruption_is_reused_only_for_its_own_method_and_k(tmp_path) -> None:
    import json

    from mdkif.experiments.reference import _saved_fit

    folder = tmp_path / "cmaes-k5"
    assert _saved_fit(folder, "cmaes", 5) is None  # nothing saved yet
    folder.mkdir()
    fit = {"method": "cmaes", "k": 5, "fit_loss": 0.14, "evaluations": 120, "seconds": 132.0}
    (folder / "router.json").write_text(json.dumps({"kind": "static", "fit": fit}))
    assert _saved_fit(folder, "cmaes", 5) == fit
    assert _saved_fit(folder, "cmaes", 20) is None and _saved_fit(folder, "gradient", 5) is None
    (folder / "router.json").write_text('{"kind": "sta')  # a torn write is fitted again, not trusted
    assert _saved_fit(folder, "cmaes", 5) is None


def test_best_single_skill_items_default_to_the_largest_cmaes_k() -> None:
    assert _cfg(routers={"cmaes_ks": [5, 20]}).routers.best_single_k is None
    assert _cfg(routers={"cmaes_ks": [5], "best_single_k": 20}).routers.best_single_k == 20
    with pytest.raises(ValidationError, match="best_single_k"):
        _cfg(routers={"best_single_k": 0})
