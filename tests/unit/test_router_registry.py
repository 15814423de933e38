"""The router registry: one entry per method, looked up instead of branching on names or classes."""

from __future__ import annotations

import typing

import pytest
import torch

from mdkif.config import ConfigError
from mdkif.fusion import SkillBank, fuse
from mdkif.models import ModelConfig, load_model
from mdkif.routing.config import RouteConfig
from mdkif.routing.data import encode, load_examples
from mdkif.routing.fit import FitResult, task_loss
from mdkif.routing.pipeline import fit_router
from mdkif.routing.registry import ROUTERS, RouterMethod, register_router, router_method
from mdkif.routing.router import MODULES, ArrowRouter, GateRouter, SkillRouter, load_router, save_router
from mdkif.testing.synthetic import make_synthetic_skills


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_synthetic_skills(
        tmp_path_factory.mktemp("skills"), tasks=("triage_yes", "triage_no"), steps=2
    )
    loaded = load_model(ModelConfig(name="tiny"))
    bank = SkillBank.from_dir(root)
    fused = fuse(loaded.model, bank)
    examples = load_examples(str(root / "tasks" / "triage_yes.jsonl"))
    return root, fused, bank, encode(loaded.tokenizer, examples[:8])


def _cfg(root, method: str, **extra) -> RouteConfig:
    task = {"source": str(root / "tasks" / "triage_yes.jsonl"), "k": 8, "n_val": 8}
    return RouteConfig.model_validate(
        {"model": {"name": "tiny"}, "skills": {"root": str(root)}, "task": task, "method": method, **extra}
    )


def test_config_methods_are_the_registered_ones_and_each_names_how_it_is_served():
    literal = typing.get_args(RouteConfig.model_fields["method"].annotation)
    assert set(literal) == set(ROUTERS) == {"gradient", "cmaes", "gate", "arrow"}
    assert {n: m.serve for n, m in ROUTERS.items()} == {
        "gradient": "merged",
        "cmaes": "merged",
        "gate": "per_example",
        "arrow": "per_token",
    }
    assert router_method("arrow").fit is None and router_method("gate").settings == "gradient"
    assert {"static": SkillRouter, "gate": GateRouter, "arrow": ArrowRouter} == MODULES
    with pytest.raises(ConfigError, match="unknown router method 'moe'.*arrow"):
        router_method("moe")
    with pytest.raises(ValueError, match="already registered"):
        register_router(ROUTERS["gradient"])


@pytest.mark.parametrize("method", ["gradient", "cmaes", "gate", "arrow"])
def test_every_method_builds_fits_and_round_trips_through_its_artifact(setup, tmp_path, method):
    root, fused, bank, train = setup
    extra = {"cmaes": {"max_evals": 4}, "gradient": {"steps": 2}, "arrow": {"top_k": 1}}
    router, res = fit_router(_cfg(root, method, **extra), fused, train, seed=0)
    assert isinstance(router, ROUTERS[method].module)
    assert (
        res.evaluations == (0 if method == "arrow" else res.evaluations) and res.final_loss == res.final_loss
    )
    save_router(router, bank, fused, tmp_path / method, {"fit": {"method": method}})
    again, info = load_router(tmp_path / method, bank)
    assert type(again) is type(router) and info["kind"] == router.kind
    assert task_loss(fused, again, train) == pytest.approx(task_loss(fused, router, train), rel=1e-5)


def test_a_new_method_is_one_registration(setup):
    root, fused, _, train = setup

    def fixed_first_skill(cfg, fused, router, batch, seed) -> FitResult:
        with torch.no_grad():
            router.logits.copy_(torch.tensor([10.0, -10.0]))
        return FitResult(evaluations=1, final_loss=task_loss(fused, router, batch))

    register_router(RouterMethod("first", SkillRouter, None, ROUTERS["gradient"].build, fixed_first_skill))
    try:
        cfg = _cfg(root, "gradient").model_copy(update={"method": "first"})
        router, res = fit_router(cfg, fused, train)
        assert router().argmax().item() == 0 and res.evaluations == 1
    finally:
        del ROUTERS["first"]
