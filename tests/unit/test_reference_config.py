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
