"""The router methods, in one place: name -> module class, settings, how it is built and fitted.

A method is the one word a config (`method:`), a report row and a fit record use for a router. Each entry
says which module it makes (and so its artifact `kind` and how it is served: `module.serve`), which
`RouteConfig` field holds its settings, how it is built for a fused model and how it is fitted on a task's
batch (`fit` None: nothing is fitted, as for Arrow). `pipeline.fit_router` and everything above it look the
method up here instead of branching on its name; a new method is one `register_router` call (plus its name
in `RouteConfig.method`, which a unit test keeps equal to this registry's names).

Shaped after peft's `register_peft_method` (a name bound to a config class and a model class).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from mdkif.config import ConfigError
from mdkif.routing.fit import FitResult, fit_cmaes, fit_gate, fit_gradient
from mdkif.routing.router import ArrowRouter, GateRouter, SkillRouter

if TYPE_CHECKING:
    from mdkif.fusion import FusedModel
    from mdkif.routing.config import RouteConfig

Build = Callable[["RouteConfig", "FusedModel"], nn.Module]
Fit = Callable[["RouteConfig", "FusedModel", nn.Module, Any, int], FitResult]


@dataclass(frozen=True)
class RouterMethod:
    name: str
    module: type[nn.Module]
    settings: str | None  # the RouteConfig field holding this method's settings (tracked with each fit)
    build: Build
    fit: Fit | None  # None: built, not fitted (its quality is only scored)
    description: str = ""

    @property
    def serve(self) -> str:
        return self.module.serve  # type: ignore[attr-defined]


ROUTERS: dict[str, RouterMethod] = {}


def register_router(method: RouterMethod) -> RouterMethod:
    if method.name in ROUTERS:
        raise ValueError(f"router method {method.name!r} is already registered")
    ROUTERS[method.name] = method
    return method


def router_method(name: str) -> RouterMethod:
    try:
        return ROUTERS[name]
    except KeyError:
        raise ConfigError(f"unknown router method {name!r}; known: {sorted(ROUTERS)}") from None


# ---- the four methods ---------------------------------------------------------------------------------
def _device(fused: FusedModel) -> torch.device:
    return next(fused.parameters()).device  # the router lives with the model (a GPU base: on the GPU)


def _static(cfg: RouteConfig, fused: FusedModel) -> nn.Module:
    r = cfg.router
    return SkillRouter(fused.num_skills, fused.num_layers, r.per_layer, r.temperature, r.normalize).to(
        _device(fused)
    )


def _gate(cfg: RouteConfig, fused: FusedModel) -> nn.Module:
    r, hidden = cfg.router, fused.model.config.hidden_size
    return GateRouter(hidden, fused.num_skills, fused.num_layers, r.per_layer, r.temperature).to(
        _device(fused)
    )


def _arrow(cfg: RouteConfig, fused: FusedModel) -> nn.Module:
    try:
        return ArrowRouter(fused.num_skills, cfg.arrow.top_k, cfg.arrow.temperature)
    except ValueError as exc:
        raise ConfigError(f"route config: field 'arrow.top_k': {exc}") from None


def _objective(cfg: RouteConfig, seed: int) -> dict[str, Any]:
    return {"reg": cfg.regularizer.kind, "strength": cfg.regularizer.strength, "seed": seed}


def _by_gradient(cfg: RouteConfig, seed: int) -> dict[str, Any]:
    g = cfg.gradient
    return {"steps": g.steps, "lr": g.lr, "batch_size": g.batch_size, **_objective(cfg, seed)}


def _fit_gradient(cfg: RouteConfig, fused: FusedModel, router: nn.Module, train: Any, seed: int) -> FitResult:
    return fit_gradient(fused, router, train, **_by_gradient(cfg, seed))  # type: ignore[arg-type]


def _fit_gate(cfg: RouteConfig, fused: FusedModel, router: nn.Module, train: Any, seed: int) -> FitResult:
    return fit_gate(fused, router, train, **_by_gradient(cfg, seed))  # type: ignore[arg-type]


def _fit_cmaes(cfg: RouteConfig, fused: FusedModel, router: nn.Module, train: Any, seed: int) -> FitResult:
    c = cfg.cmaes
    return fit_cmaes(
        fused,
        router,  # type: ignore[arg-type]
        train,
        max_evals=c.max_evals,
        popsize=c.popsize,
        sigma0=c.sigma0,
        **_objective(cfg, seed),
    )


register_router(
    RouterMethod("gradient", SkillRouter, "gradient", _static, _fit_gradient, "Adam on the mixture's logits")
)
register_router(
    RouterMethod("cmaes", SkillRouter, "cmaes", _static, _fit_cmaes, "few-shot black-box search (CMA-ES)")
)
register_router(
    RouterMethod("gate", GateRouter, "gradient", _gate, _fit_gate, "input-conditioned mixture per prompt")
)
register_router(
    RouterMethod("arrow", ArrowRouter, "arrow", _arrow, None, "zero-shot per-token routing, nothing fitted")
)
